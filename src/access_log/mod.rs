//! The JSON access log (SPEC.md): one object per line, written by a dedicated thread so the
//! request path only hands over a record and never waits on a disk or a pipe. When the writer
//! cannot keep up, lines are dropped and counted rather than slowing requests down.

mod line;

use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method};

use crate::snapshot::AccessLogTarget;

/// Lines waiting for the writer; past this, new lines are dropped.
const QUEUE: usize = 16 * 1024;

/// One request, as logged. Never a token, a cookie, an API key or a query string.
///
/// Built on the request path, so it holds what the request already has (an address, a method,
/// the traceparent) and the writer thread turns it into text: see `line.rs` for the JSON.
#[derive(Debug)]
pub struct AccessRecord {
    pub ts: SystemTime,
    pub request_id: HeaderValue,
    /// Logged as `""` when unknown.
    pub client_ip: Option<IpAddr>,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_sent: usize,
    pub cache: Option<&'static str>,
    pub consumer: Option<String>,
    /// The request's W3C `traceparent`, as the gateway checked or made it (empty when the
    /// request never got one); its trace id is logged.
    pub traceparent: HeaderValue,
    /// For a composition: the keys of the parts that failed.
    pub failed_parts: Option<String>,
    /// For a GraphQL request: its operation's name, when it has one.
    pub operation: Option<Arc<str>>,
    /// Over mTLS: the subject of the client certificate the handshake verified.
    pub client_cert: Option<std::sync::Arc<str>>,
}

/// Records waiting for the writer. Requests only push here; they never wake the writer, which
/// comes round every `WRITE_INTERVAL` and takes the whole batch. Waking it for each record
/// (a futex call, a context switch on a busy core and a write per handful of lines) cost more
/// than the rest of the access log together.
struct Queue {
    records: Mutex<Vec<AccessRecord>>,
    /// Flush requests: each is answered once everything before it is written.
    flushes: Mutex<Vec<SyncSender<()>>>,
    /// Set by `reopen` (SIGUSR1): the writer opens the file's path again before it writes next.
    reopen: AtomicBool,
    writer: std::thread::Thread,
}

/// How far behind a quiet gateway's log may be.
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

pub struct AccessLog {
    queue: Option<Arc<Queue>>,
}

impl AccessLog {
    /// Start the writer for `target`. A file is opened for appending now, so a bad path is
    /// reported at start-up, not lost later.
    pub fn start(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let (out, path): (Box<dyn Write + Send>, _) = match target {
            AccessLogTarget::Off => return Ok(AccessLog { queue: None }),
            AccessLogTarget::Stdout => (Box::new(std::io::stdout()), None),
            AccessLogTarget::File(path) => (Box::new(open(path)?), Some(path.clone())),
        };
        let (ready_tx, ready_rx) = sync_channel(1);
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let Ok(queue) = ready_rx.recv() else { return };
                write_lines(queue, out, path)
            })?;
        let queue = Arc::new(Queue {
            records: Mutex::new(Vec::with_capacity(1024)),
            flushes: Mutex::new(Vec::new()),
            reopen: AtomicBool::new(false),
            writer: handle.thread().clone(),
        });
        ready_tx
            .send(Arc::clone(&queue))
            .map_err(|_| std::io::Error::other("the access log writer did not start"))?;
        Ok(AccessLog { queue: Some(queue) })
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Hand a record to the writer. Returns false when it was dropped (queue full).
    pub fn log(&self, record: AccessRecord) -> bool {
        let Some(queue) = &self.queue else {
            return true;
        };
        let mut records = lock(&queue.records);
        if records.len() >= QUEUE {
            return false;
        }
        records.push(record);
        true
    }

    /// Wait (up to a second) until every line handed over so far is written out.
    pub fn flush(&self) {
        if let Some(queue) = &self.queue {
            let (done, wait) = sync_channel(1);
            lock(&queue.flushes).push(done);
            queue.writer.unpark();
            let _ = wait.recv_timeout(Duration::from_secs(1));
        }
    }

    /// Open the log file again by its path, as logrotate expects after it renamed the file
    /// (SIGUSR1): lines handed over before go to the old file, the rest to the new one.
    pub fn reopen(&self) {
        if let Some(queue) = &self.queue {
            queue.reopen.store(true, Ordering::Release);
            queue.writer.unpark();
        }
    }
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_lines(queue: Arc<Queue>, out: Box<dyn Write + Send>, path: Option<PathBuf>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut batch = Vec::with_capacity(1024);
    let mut text = Vec::with_capacity(64 * 1024);
    // Runs as long as the process: the gateway logs until it exits.
    loop {
        std::thread::park_timeout(WRITE_INTERVAL);
        // Flush requests first: a record logged before a flush was asked for is in the
        // batch taken next.
        let flushes = std::mem::take(&mut *lock(&queue.flushes));
        std::mem::swap(&mut batch, &mut *lock(&queue.records));
        for record in batch.drain(..) {
            line::encode(&mut text, &record);
        }
        let _ = out.write_all(&text);
        text.clear();
        let _ = out.flush();
        if queue.reopen.swap(false, Ordering::AcqRel) {
            if let Some(path) = &path {
                // A file that cannot be opened (its directory gone, no permission) leaves the
                // log where it was: lines written to the old file are better than none.
                match open(path) {
                    Ok(file) => {
                        out = BufWriter::with_capacity(64 * 1024, Box::new(file));
                        log::info!("SIGUSR1: access log {} reopened", path.display());
                    }
                    Err(e) => log::error!(
                        "SIGUSR1: cannot reopen the access log {}: {e}; still writing to the old file",
                        path.display()
                    ),
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// `2026-11-22T04:41:00.123Z`, without a date library.
pub fn format_rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    push_rfc3339(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `t` as RFC 3339 in UTC with milliseconds, digit by digit: the access log writes one
/// per line, and `format!` costs several times as much.
pub fn push_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let digits = |out: &mut Vec<u8>, n: u64, width: u32| {
        for i in (0..width).rev() {
            out.push(b'0' + (n / 10u64.pow(i) % 10) as u8);
        }
    };
    digits(out, year.clamp(0, 9999) as u64, 4);
    out.push(b'-');
    digits(out, month as u64, 2);
    out.push(b'-');
    digits(out, day as u64, 2);
    out.push(b'T');
    digits(out, rem / 3600, 2);
    out.push(b':');
    digits(out, rem % 3600 / 60, 2);
    out.push(b':');
    digits(out, rem % 60, 2);
    out.push(b'.');
    digits(out, u64::from(since.subsec_millis()), 3);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_322_460_123);
        assert_eq!(format_rfc3339(t), "2026-11-22T04:41:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(format_rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
