//! The built-in plugin kinds, listed explicitly: a plugin exists when it is named here.

use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::api_key::{ApiKeyConfig, ApiKeyPlugin};
use crate::cors::{CorsConfig, CorsPlugin};
use crate::graphql_guard::{GraphqlGuardConfig, GraphqlGuardPlugin};
use crate::headers::{HeadersConfig, HeadersPlugin};
use crate::ip_filter::{IpFilterConfig, IpFilterPlugin};
use crate::jwt::{JwtConfig, JwtPlugin};
use crate::rate_limit::{RateLimitConfig, RateLimitPlugin};
use crate::Plugin;

/// What a plugin may use from the rest of the config when it is built.
#[derive(Clone)]
pub struct PluginEnv {
    pub consumers: Arc<crate::consumers::Consumers>,
    /// The shared Redis of `[redis]`, if configured.
    pub redis: Option<Arc<crate::redis_store::RedisStore>>,
    pub metrics: Arc<crate::metrics::PluginMetrics>,
}

/// Every plugin kind this build knows, for error messages and docs. `cache` is built by the
/// gateway itself (it works through Pingora's cache hooks), so it never reaches `build_plugin`.
pub fn known_kinds() -> &'static [&'static str] {
    &[
        "api_key",
        "cache",
        "cors",
        "graphql_guard",
        "headers",
        "ip_filter",
        "jwt",
        "rate_limit",
    ]
}

/// The keys of a kind's config that name files it reads when it is built. A reload compares
/// their contents too, so an instance whose key file was rewritten is built again even though
/// its config text did not change.
pub fn file_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "jwt" => &["public_key"],
        "graphql_guard" => &["persisted_queries"],
        _ => &[],
    }
}

/// Build plugin instance `name` of `kind` from its config table (the table without `kind`).
/// Each kind deserializes its own typed config, with unknown keys rejected. Errors are the
/// deserializer's own type, so a problem inside a plugin's table keeps its place in the file.
pub fn build_plugin<'de, D>(
    name: &str,
    kind: &str,
    config: D,
    env: &PluginEnv,
) -> Result<Arc<dyn Plugin>, D::Error>
where
    D: Deserializer<'de>,
{
    let consumers = || Arc::clone(&env.consumers);
    let plugin: Arc<dyn Plugin> = match kind {
        "api_key" => Arc::new(
            ApiKeyPlugin::new(ApiKeyConfig::deserialize(config)?, consumers())
                .map_err(D::Error::custom)?,
        ),
        "cors" => {
            Arc::new(CorsPlugin::new(CorsConfig::deserialize(config)?).map_err(D::Error::custom)?)
        }
        "graphql_guard" => Arc::new(
            GraphqlGuardPlugin::new(
                GraphqlGuardConfig::deserialize(config)?,
                Arc::clone(&env.metrics),
            )
            .map_err(D::Error::custom)?,
        ),
        "ip_filter" => Arc::new(
            IpFilterPlugin::new(IpFilterConfig::deserialize(config)?).map_err(D::Error::custom)?,
        ),
        "headers" => Arc::new(
            HeadersPlugin::new(HeadersConfig::deserialize(config)?).map_err(D::Error::custom)?,
        ),
        "rate_limit" => Arc::new(
            RateLimitPlugin::new(
                name,
                RateLimitConfig::deserialize(config)?,
                env.redis.clone(),
                Arc::clone(&env.metrics),
            )
            .map_err(D::Error::custom)?,
        ),
        "jwt" => Arc::new(
            JwtPlugin::new(JwtConfig::deserialize(config)?, consumers())
                .map_err(D::Error::custom)?,
        ),
        other => {
            return Err(D::Error::custom(format!(
                "unknown plugin kind \"{other}\" (known: {})",
                known_kinds().join(", ")
            )))
        }
    };
    Ok(plugin)
}
