//! Assembling the Pingora server: the proxy service on `server.listen`, the admin API on
//! `admin.listen`, and the background services (health checks, drain).

use std::path::PathBuf;
use std::sync::Arc;

use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::access_log::AccessLog;
use crate::admin::AdminApi;
use crate::connection::Connections;
use crate::lifecycle::Drain;
use crate::log_reopen::LogReopen;
use crate::metrics::Metrics;
use crate::proxy::direct::Direct;
use crate::proxy::Portico;
use crate::reload::{ConfigWatcher, SighupReload};
use crate::snapshot::Snapshot;
use crate::state::GatewayState;
use crate::upstream::discovery::DiscoveryService;
use crate::upstream::health::HealthChecks;
use crate::upstream::sweep::PoolSweeper;

/// How the process was asked to start (SPEC.md's command line, minus `-t`).
pub struct StartOptions {
    pub config_path: PathBuf,
    pub upgrade: bool,
    /// Running as the background process of `-d`: write `server.pid_file`.
    pub write_pid_file: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// Fail at once, naming the address, when another process holds one of ours (as nginx and
/// HAProxy do). Pingora would retry the bind for 30 s while the admin API answers, so the
/// instance looks alive and ready while it serves nothing. Not on `-u`: the listeners then
/// come from the running instance. The check binds as Pingora does (with SO_REUSEADDR, so a
/// port left in TIME_WAIT passes) and lets go at once.
fn check_listen_addresses(
    addrs: impl IntoIterator<Item = std::net::SocketAddr>,
) -> Result<(), StartError> {
    for addr in addrs {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        socket
            .and_then(|s| {
                s.set_reuseaddr(true)?;
                s.bind(addr)
            })
            .map_err(|error| StartError::Listen { addr, error })?;
    }
    Ok(())
}

/// Build the server for a compiled snapshot and run it until it is told to stop. `metrics`
/// must be the ones the snapshot was compiled with.
pub fn run(snapshot: Snapshot, metrics: Metrics, options: StartOptions) -> Result<(), StartError> {
    let server_settings = snapshot.server.clone();
    let access_log =
        AccessLog::start(&server_settings.access_log).map_err(StartError::AccessLog)?;
    let admin_listen = snapshot.admin_listen;
    if !options.upgrade {
        let tls = snapshot.tls.iter().flat_map(|t| t.listen.iter().copied());
        let plain = server_settings.listen.iter().copied();
        check_listen_addresses(plain.chain(tls).chain([admin_listen]))?;
    }
    let state = GatewayState::new(snapshot, options.config_path, metrics, access_log);
    // The config is valid and about to serve: what its plugins run in the background starts.
    state.current().start(&state.metrics);

    let conf = ServerConf {
        threads: server_settings.threads,
        daemon: false,
        // Pingora waits out this whole period on SIGTERM; `lifecycle::Drain` ends the process
        // earlier once nothing is in flight. Rounded up to whole seconds, as Pingora counts.
        grace_period_seconds: Some(server_settings.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: server_settings.pid_file.clone(),
        upgrade_sock: server_settings.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    if options.write_pid_file {
        // After bootstrap: with `-u`, the listeners are ours by now.
        if let Err(e) = std::fs::write(
            &server_settings.pid_file,
            format!("{}\n", std::process::id()),
        ) {
            log::error!(
                "cannot write the pid file {}: {e}",
                server_settings.pid_file
            );
        }
    }

    // Pingora's proxy and the fast driver inside Portico's own keep-alive loop (see
    // `connection.rs`).
    let portico = Portico::new(Arc::clone(&state));
    let mut http_proxy = pingora_proxy::http_proxy(&server.configuration, portico.clone());
    if server_settings.http2 {
        http_proxy.server_options = Some(crate::connection::h2::server_options());
        http_proxy.h2_options = Some(crate::connection::h2::options(&server_settings));
    }
    let direct = Direct::new(portico, &server.configuration);
    let mut proxy = Service::new(
        "portico proxy".to_string(),
        Connections::new(http_proxy, direct, Arc::clone(&state)),
    );
    for addr in &server_settings.listen {
        // No 64 KiB read buffer under the HTTP parser for each client connection: over plain
        // TCP it only adds a copy, and it was most of an idle keep-alive connection's memory
        // (about 88 KiB each, against 26 KiB without; see loadtest/RESULTS.md).
        let unbuffered_reads = L4BufferSettings::default().read(0);
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(unbuffered_reads));
    }
    if let (Some(runtime), Some(tls)) = (&state.tls, &state.current().tls) {
        for addr in &tls.listen {
            let settings = runtime
                .listener_settings(state.metrics.tls_handshakes.clone(), server_settings.http2)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            let unbuffered_reads = L4BufferSettings::default().read(0);
            proxy.add_listener(
                ListenerConfig::tcp(addr.to_string())
                    .tls(settings)
                    .l4_buffer(unbuffered_reads),
            );
        }
    }
    proxy.threads = Some(server_settings.threads);

    let mut admin = Service::new(
        "portico admin".to_string(),
        AdminApi {
            state: Arc::clone(&state),
        },
    );
    admin.add_tcp(&admin_listen.to_string());
    admin.threads = Some(1);

    let health = background_service(
        "health checks",
        HealthChecks {
            state: Arc::clone(&state),
        },
    );
    let drain = background_service(
        "drain",
        Drain {
            state: Arc::clone(&state),
        },
    );
    let sighup = background_service(
        "sighup reload",
        SighupReload {
            state: Arc::clone(&state),
        },
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(health);
    server.add_service(background_service(
        "service discovery",
        DiscoveryService {
            state: Arc::clone(&state),
        },
    ));
    server.add_service(background_service(
        "redis connections",
        crate::redis_service::RedisConnections {
            state: Arc::clone(&state),
        },
    ));
    server.add_service(background_service(
        "upstream pool sweeper",
        PoolSweeper {
            state: Arc::clone(&state),
        },
    ));
    server.add_service(drain);
    server.add_service(sighup);
    server.add_service(background_service(
        "traffic sampler",
        crate::admin::traffic::TrafficSampler {
            state: Arc::clone(&state),
        },
    ));
    server.add_service(background_service(
        "sigusr1 log reopen",
        LogReopen {
            state: Arc::clone(&state),
        },
    ));
    server.add_service(background_service(
        "config watcher",
        ConfigWatcher {
            state: Arc::clone(&state),
        },
    ));
    let tls_listen = state
        .current()
        .tls
        .as_ref()
        .map(|t| format!(", TLS on {:?}", t.listen))
        .unwrap_or_default();
    log::info!(
        "portico {} serving {} on {:?}{tls_listen}, admin on {admin_listen}",
        env!("CARGO_PKG_VERSION"),
        state.config_path.display(),
        server_settings.listen,
    );
    server.run_forever()
}

/// SIGHUP means "reload" once the `sighup reload` service listens for it (SIGUSR1 "reopen the
/// log" once its service does), but until then their default action ends the process: an
/// operator's (or a deploy script's, or logrotate's) signal in the first moments after start
/// (while the config loads, the services start) would kill the gateway. `main` ignores them
/// first thing; each service's handler replaces this disposition when it starts, and a change
/// to the file made meanwhile is still seen by the watcher.
#[allow(unsafe_code)]
pub fn ignore_hangups_until_handled() {
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory of ours, and no
    // other thread installs a SIGHUP or SIGUSR1 handler before the services start.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGUSR1, libc::SIG_IGN);
    }
}
