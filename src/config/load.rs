//! Reading a config file: `${ENV}` expansion, TOML parsing with spans, and deserializing each
//! section and entry on its own so that one problem never hides the next.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use portico_plugins::consumers::Consumers;
use portico_plugins::metrics::PluginMetrics;
use portico_plugins::redis_store::RedisStore;
use portico_plugins::PluginEnv;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{ImDocument, Item, Value};

use super::env::{expand, toml_string_literal};
use super::error::{ConfigErrors, Problems};
use super::file::{FileConfig, PluginBody, PluginInstance};
use super::source_map::SourceMap;

/// A file that parsed as TOML, with what could be deserialized and the problems found so far.
pub struct ParsedConfig {
    pub file: FileConfig,
    pub map: SourceMap,
    pub origin: String,
    pub problems: Vec<super::error::ConfigError>,
}

/// What building a config needs from the running gateway, beyond the file.
#[derive(Clone)]
pub struct BuildContext {
    pub plugin_metrics: Arc<PluginMetrics>,
    /// The instances serving now, to keep the unchanged ones (and their state) on reload.
    pub reuse: Reuse,
}

/// Plugin instances and the Redis connection of the config serving now.
#[derive(Clone, Default)]
pub struct Reuse {
    pub plugins: BTreeMap<String, PluginInstance>,
    pub redis: Option<(String, Arc<RedisStore>)>,
}

impl BuildContext {
    /// For validating a config (`portico -t`, tests): metrics that go nowhere.
    pub fn for_validation() -> Result<BuildContext, prometheus::Error> {
        Ok(BuildContext {
            plugin_metrics: Arc::new(PluginMetrics::unregistered()?),
            reuse: Reuse::default(),
        })
    }
}

/// Read and parse the config at `path`, expanding `${NAME}` from the process environment.
pub fn read_file(path: &Path, ctx: &BuildContext) -> Result<ParsedConfig, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(&origin, format!("cannot read the config file: {e}")))?;
    parse_str(&text, &origin, |name| std::env::var(name).ok(), ctx)
}

/// Parse config text. Fails only when the text is not TOML at all; every other problem is
/// collected in `ParsedConfig::problems` for the compiler to add its own to.
pub fn parse_str(
    text: &str,
    origin: &str,
    env: impl Fn(&str) -> Option<String>,
    ctx: &BuildContext,
) -> Result<ParsedConfig, ConfigErrors> {
    let doc = parse_toml(text.to_string(), origin)?;
    let (doc, env_errors) = expand_env(doc, origin, &env)?;
    let map = SourceMap::build(&doc);
    let mut problems = Problems::new(&map);
    for (path, message) in env_errors {
        problems.at(path, message);
    }
    let config_dir = std::path::Path::new(origin)
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let file = deserialize_sections(&doc, ctx, &config_dir, &mut problems);
    let problems = problems.into_errors();
    Ok(ParsedConfig {
        file,
        map,
        origin: origin.to_string(),
        problems,
    })
}

fn parse_toml(text: String, origin: &str) -> Result<ImDocument<String>, ConfigErrors> {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    ImDocument::parse(text).map_err(|e| {
        let line_col = e.span().map(|span| {
            let line = line_starts.partition_point(|&s| s <= span.start).max(1);
            (line, span.start - line_starts[line - 1] + 1)
        });
        ConfigErrors {
            origin: origin.to_string(),
            errors: vec![super::error::ConfigError {
                path: String::new(),
                message: format!("invalid TOML: {}", e.message().trim()),
                line_col,
            }],
        }
    })
}

/// A problem found before the source map of the final document exists: key path, message.
type KeyProblem = (String, String);

/// Replace each string literal that mentions `${` with its expansion, written as a one-line
/// literal so that line numbers in later errors still match the file the user wrote.
fn expand_env(
    doc: ImDocument<String>,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(ImDocument<String>, Vec<KeyProblem>), ConfigErrors> {
    let map = SourceMap::build(&doc);
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let mut errors = Vec::new();
    collect_strings(doc.as_item(), &mut |value| {
        let (Some(text), Some(span)) = (value.as_str(), value.span()) else {
            return;
        };
        if !text.contains('$') {
            return;
        }
        match expand(text, env) {
            Ok(expanded) if expanded != text => edits.push((span, toml_string_literal(&expanded))),
            Ok(_) => {}
            Err(message) => {
                errors.push((map.path_at(span.start).unwrap_or_default(), message));
            }
        }
    });
    if edits.is_empty() {
        return Ok((doc, errors));
    }
    let mut source = doc.raw().to_string();
    edits.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
    for (span, literal) in edits {
        source.replace_range(span, &literal);
    }
    Ok((parse_toml(source, origin)?, errors))
}

fn collect_strings(item: &Item, visit: &mut impl FnMut(&Value)) {
    match item {
        Item::Value(v) => collect_value_strings(v, visit),
        Item::Table(t) => t.iter().for_each(|(_, i)| collect_strings(i, visit)),
        Item::ArrayOfTables(a) => a
            .iter()
            .for_each(|t| t.iter().for_each(|(_, i)| collect_strings(i, visit))),
        Item::None => {}
    }
}

fn collect_value_strings(value: &Value, visit: &mut impl FnMut(&Value)) {
    match value {
        Value::String(_) => visit(value),
        Value::Array(a) => a.iter().for_each(|v| collect_value_strings(v, visit)),
        Value::InlineTable(t) => t.iter().for_each(|(_, v)| collect_value_strings(v, visit)),
        _ => {}
    }
}

/// An item as a value that keeps its spans, so serde errors can be located.
fn as_value(item: &Item) -> Option<Value> {
    match item.clone() {
        Item::Value(v) => Some(v),
        Item::Table(t) => Some(Value::InlineTable(t.into_inline_table())),
        Item::ArrayOfTables(a) => Some(Value::Array(a.into_array())),
        Item::None => None,
    }
}

fn deserialize<T: DeserializeOwned>(item: &Item, path: &str, problems: &mut Problems) -> Option<T> {
    let value = as_value(item)?;
    match T::deserialize(value.into_deserializer()) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.from_toml(path, &e);
            None
        }
    }
}

/// Deserialize each named entry of a table like `[upstreams.NAME]`, reporting each
/// failure and remembering which names were present but broken.
fn deserialize_named<T: DeserializeOwned>(
    item: &Item,
    section: &str,
    problems: &mut Problems,
    broken: &mut Vec<String>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Some(table) = item.as_table_like() else {
        problems.at(section, "must be a table of named entries");
        return out;
    };
    for (name, entry) in table.iter() {
        let path = format!("{section}.{name}");
        if !entry.is_table_like() {
            problems.at(&path, "must be a table");
            broken.push(name.to_string());
            continue;
        }
        match deserialize::<T>(entry, &path, problems) {
            Some(v) => {
                out.insert(name.to_string(), v);
            }
            None => broken.push(name.to_string()),
        }
    }
    out
}

fn deserialize_sections(
    doc: &ImDocument<String>,
    ctx: &BuildContext,
    config_dir: &std::path::Path,
    problems: &mut Problems,
) -> FileConfig {
    let mut file = FileConfig::default();
    let mut ignored = Vec::new();
    let mut plugins = None;
    for (key, item) in doc.as_table().iter() {
        match key {
            "server" => {
                if let Some(v) = deserialize(item, key, problems) {
                    file.server = v;
                }
            }
            "admin" => {
                if let Some(v) = deserialize(item, key, problems) {
                    file.admin = v;
                }
            }
            "redis" => file.redis = deserialize(item, key, problems),
            "cache" => file.cache = deserialize(item, key, problems),
            "tls" => file.tls = deserialize(item, key, problems),
            "dns" => file.dns = deserialize(item, key, problems),
            "consul" => file.consul = deserialize(item, key, problems),
            "tracing" => file.tracing = deserialize(item, key, problems),
            "upstreams" => {
                file.upstreams =
                    deserialize_named(item, key, problems, &mut file.broken_upstreams);
            }
            "consumers" => file.consumers = deserialize_named(item, key, problems, &mut ignored),
            "graphql" => {
                file.graphql = deserialize_named(item, key, problems, &mut file.broken_graphql);
            }
            // Built last: plugins may refer to consumers written later in the file.
            "plugins" => plugins = Some(item),
            "routes" => {
                let Some(routes) = item.as_array_of_tables() else {
                    problems.at(key, "must be an array of tables, written [[routes]]");
                    continue;
                };
                for (i, route) in routes.iter().enumerate() {
                    let path = format!("routes[{i}]");
                    let item = Item::Table(route.clone());
                    if let Some(r) = deserialize(&item, &path, problems) {
                        file.routes.push((i, r));
                    }
                }
            }
            other => problems.at(
                other,
                "unknown section (expected server, admin, tls, redis, cache, dns, consul, tracing, upstreams, consumers, plugins, graphql or routes)",
            ),
        }
    }
    let section_text = |key: &str| {
        doc.as_table()
            .get(key)
            .map(|i| i.to_string())
            .unwrap_or_default()
    };
    // The store is kept across a reload when nothing about it changed, certificates included.
    let redis_spec = file
        .redis
        .as_ref()
        .and_then(|r| super::redis::compile(r, config_dir, problems));
    let redis_fingerprint = format!(
        "{}\n{:x}",
        section_text("redis"),
        redis_spec.as_ref().map_or(0, |spec| {
            use std::hash::{BuildHasher, BuildHasherDefault};
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(spec)
        })
    );
    let redis = match (redis_spec, &ctx.reuse.redis) {
        (Some(_), Some((fp, store))) if *fp == redis_fingerprint => Some(Arc::clone(store)),
        (Some(spec), _) => RedisStore::new(spec).ok().map(Arc::new),
        (None, _) => None,
    };
    file.redis_store = redis
        .clone()
        .map(|store| (redis_fingerprint.clone(), store));
    if let Some(item) = plugins {
        let mut consumers = Consumers::default();
        for (name, c) in &file.consumers {
            // Keys held twice are reported when the snapshot is compiled.
            let _ = consumers.insert(name, c.tier.as_deref(), &c.api_keys);
        }
        // Plugins that read consumers or Redis are rebuilt when those change.
        let depends_on = format!("{}\n{redis_fingerprint}", section_text("consumers"));
        let env = PluginEnv {
            consumers: Arc::new(consumers),
            redis,
            metrics: Arc::clone(&ctx.plugin_metrics),
        };
        file.plugins = build_plugins(
            item,
            &env,
            &depends_on,
            &ctx.reuse,
            problems,
            &mut file.broken_plugins,
        );
    }
    file
}

/// Each `[plugins.NAME]` names its `kind`; the rest of the table is that kind's own typed
/// config, deserialized by the plugin itself.
fn build_plugins(
    item: &Item,
    env: &PluginEnv,
    depends_on: &str,
    reuse: &Reuse,
    problems: &mut Problems,
    broken: &mut Vec<String>,
) -> BTreeMap<String, PluginInstance> {
    let mut out = BTreeMap::new();
    let Some(table) = item.as_table_like() else {
        problems.at("plugins", "must be a table of named plugins");
        return out;
    };
    for (name, entry) in table.iter() {
        let path = format!("plugins.{name}");
        let Some(Value::InlineTable(mut config)) = as_value(entry) else {
            problems.at(&path, "must be a table");
            broken.push(name.to_string());
            continue;
        };
        let kind = match config.remove("kind") {
            Some(Value::String(kind)) => kind.value().to_string(),
            Some(_) => {
                problems.at(format!("{path}.kind"), "must be a string");
                broken.push(name.to_string());
                continue;
            }
            None => {
                problems.at(&path, "missing `kind` (the plugin type, like \"jwt\")");
                broken.push(name.to_string());
                continue;
            }
        };
        let fingerprint = format!(
            "{kind}\n{config}\n{depends_on}\n{}",
            files_fingerprint(&kind, &config)
        );
        if let Some(kept) = reuse
            .plugins
            .get(name)
            .filter(|p| p.fingerprint == fingerprint)
        {
            out.insert(name.to_string(), kept.clone());
            continue;
        }
        let deserializer = Value::InlineTable(config).into_deserializer();
        match build_plugin(name, &kind, deserializer, env) {
            Ok(plugin) => {
                out.insert(
                    name.to_string(),
                    PluginInstance {
                        kind,
                        plugin,
                        fingerprint,
                    },
                );
            }
            Err(e) => {
                problems.from_toml(&path, &e);
                broken.push(name.to_string());
            }
        }
    }
    out
}

/// What the files a plugin's config names hold now (a hash of each, in key order), so a
/// reload rebuilds an instance whose key file changed though its config text did not. A file
/// that cannot be read hashes as missing; building the instance then reports why.
fn files_fingerprint(kind: &str, config: &toml_edit::InlineTable) -> String {
    use std::hash::{Hash, Hasher};
    let mut out = String::new();
    for key in portico_plugins::file_keys(kind) {
        let Some(path) = config.get(key).and_then(Value::as_str) else {
            continue;
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match std::fs::read(path) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(_) => "missing".hash(&mut hasher),
        }
        out.push_str(&format!("{key}={:016x};", hasher.finish()));
    }
    out
}

/// The cache and compression are built here, by the gateway: they work on the answer's
/// body through the pipeline's hooks rather than the plugin chain. Every other kind is the plugins crate's.
fn build_plugin(
    name: &str,
    kind: &str,
    config: toml_edit::de::ValueDeserializer,
    env: &PluginEnv,
) -> Result<PluginBody, toml_edit::de::Error> {
    use serde::de::Error as _;
    use serde::Deserialize as _;
    if kind == "cache" {
        let config = crate::cache::CacheConfig::deserialize(config)?;
        let policy =
            crate::cache::CachePolicy::compile(config).map_err(toml_edit::de::Error::custom)?;
        return Ok(PluginBody::Cache(Arc::new(policy)));
    }
    if kind == "compress" {
        let config = crate::proxy::compress::CompressConfig::deserialize(config)?;
        let policy = crate::proxy::compress::CompressPolicy::compile(config)
            .map_err(toml_edit::de::Error::custom)?;
        return Ok(PluginBody::Compress(Arc::new(policy)));
    }
    portico_plugins::build_plugin(name, kind, config, env).map(PluginBody::Chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ParsedConfig {
        parse_str(
            text,
            "test.toml",
            |name| (name == "TOKEN").then(|| "abc".to_string()),
            &BuildContext::for_validation().unwrap(),
        )
        .unwrap()
    }

    fn messages(p: &ParsedConfig) -> Vec<String> {
        let errors = ConfigErrors {
            origin: p.origin.clone(),
            errors: p.problems.clone(),
        };
        errors.lines()
    }

    #[test]
    fn every_problem_is_reported_with_its_path_and_position() {
        let p = parse(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\ngrace_period = \"soon\"\n\n\
             [upstreams.users]\ntargets = [\"127.0.0.1:1\"]\nbalanse = \"random\"\n\n\
             [upstreams.orders]\ntargets = [{ addr = \"127.0.0.1:2\", wieght = 2 }]\n\n\
             [[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"users\"\nmethod = [\"GET\"]\n",
        );
        let lines = messages(&p);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].starts_with("test.toml:3:16: server.grace_period: "),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("test.toml:7:1: upstreams.users.balanse: unknown field `balanse`"),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("test.toml:10:"), "{}", lines[2]);
        assert!(
            lines[2].contains("upstreams.orders.targets[0]"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("wieght"), "{}", lines[2]);
        assert!(
            lines[3].starts_with("test.toml:16:1: routes[0].method: unknown field `method`"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn environment_variables_are_expanded_and_unset_ones_named() {
        let p = parse(
            "[consumers.acme]\napi_keys = [\"${TOKEN}\", \"k-${TOKEN}-2\"]\n\n\
             [consumers.other]\napi_keys = [\"${NOT_SET}\"]\n",
        );
        assert_eq!(p.file.consumers["acme"].api_keys, vec!["abc", "k-abc-2"]);
        let lines = messages(&p);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0]
                .contains("consumers.other.api_keys[0]: environment variable NOT_SET is not set"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn broken_toml_is_one_located_error() {
        let err = parse_str(
            "[server]\nlisten = [\n",
            "x.toml",
            |_| None,
            &BuildContext::for_validation().unwrap(),
        )
        .err()
        .unwrap();
        assert_eq!(err.errors.len(), 1);
        assert!(err.lines()[0].starts_with("x.toml:"), "{:?}", err.lines());
        assert!(err.lines()[0].contains("invalid TOML"), "{:?}", err.lines());
    }

    #[test]
    fn unknown_sections_and_plugin_kinds_are_errors() {
        let p = parse(
            "[sever]\nlisten = []\n\n[plugins.x]\nkind = \"nope\"\n\n[plugins.y]\nlimit = 1\n",
        );
        let lines = messages(&p);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains("sever: unknown section"));
        assert!(
            lines[1].contains("plugins.x: unknown plugin kind \"nope\""),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("plugins.y: missing `kind`"),
            "{}",
            lines[2]
        );
    }
}
