//! The built-in plugin kinds, listed explicitly: a plugin exists when it is named here.

use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::headers::HeadersPlugin;
use crate::Plugin;

/// A plugin's config was rejected. Built from the deserializer's own error type so that a
/// problem inside a plugin's table keeps its position in the config file.
pub type PluginConfigError<E> = E;

/// Every plugin kind this build knows, for error messages and docs.
pub fn known_kinds() -> &'static [&'static str] {
    &["headers"]
}

/// Build one plugin instance of `kind` from its config table (the table without `kind`).
/// Each kind deserializes its own typed config, with unknown keys rejected.
pub fn build_plugin<'de, D>(
    kind: &str,
    config: D,
) -> Result<Arc<dyn Plugin>, PluginConfigError<D::Error>>
where
    D: Deserializer<'de>,
{
    match kind {
        "headers" => {
            let cfg = crate::headers::HeadersConfig::deserialize(config)?;
            let plugin = HeadersPlugin::new(cfg).map_err(D::Error::custom)?;
            Ok(Arc::new(plugin))
        }
        other => Err(D::Error::custom(format!(
            "unknown plugin kind \"{other}\" (known: {})",
            known_kinds().join(", ")
        ))),
    }
}
