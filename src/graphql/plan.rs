//! The `resolvers` of a schema, compiled against its SDL: which field each one resolves, the
//! upstream call it makes, with every template placeholder checked against the scope it reads
//! (`args`, `parent`, `sibling`, `keys`, the route's captures, the verified identity). Nothing
//! here is looked up by name per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use serde_json::Value;

use super::sdl::{named_type, FieldDef, Model};
use crate::compose::template::{parse_path, Step, Template};
use crate::config::{BatchSpec, ResolverSpec};
use crate::upstream::live::Upstream;

/// Where a placeholder of a resolver's templates takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `{args.id}`: an argument of the field, as the query gave it (or its default).
    Arg(String, Vec<Step>),
    /// `{parent.id}`: the JSON the parent object came from.
    Parent(Vec<Step>),
    /// `{sibling.recentOrders}`: the answer of a sibling field named in `after`.
    Sibling(String, Vec<Step>),
    /// `{keys}`: a batched call's keys (comma-separated in a path, a list in a body).
    Keys,
    /// `{user_id}`: a path capture of the route serving the schema.
    Capture(String),
    Consumer,
    Claim(String),
}

/// A JSON body template: strings are templates; a string that is one placeholder takes that
/// value as it is, so `orders = "{sibling.recentOrders}"` sends the list itself.
#[derive(Debug, Clone)]
pub enum Body {
    Value(Source),
    Text(Template<Source>),
    Object(Vec<(String, Body)>),
    Array(Vec<Body>),
    Literal(Value),
}

/// One upstream call a field makes.
pub struct Call {
    pub upstream: Arc<Upstream>,
    pub method: Method,
    pub path: Template<Source>,
    pub query: Vec<(String, Template<Source>)>,
    pub headers: Vec<(HeaderName, Template<Source>)>,
    pub body: Option<Body>,
    pub timeout: Option<Duration>,
}

/// `batch`: the keys of every parent in one call, its answer's items matched back by key.
pub struct Batch {
    /// Where each parent's keys are (after `parent.`): one key or a list of them.
    pub keys: Vec<Step>,
    /// Where each answer item's key is.
    pub key: Vec<Step>,
    pub max: usize,
}

pub enum Resolver {
    /// The field makes this call, once per parent or batched over all of them.
    Call {
        call: Box<Call>,
        batch: Option<Batch>,
        /// Sibling fields whose answers the templates read: (field name, its call).
        after: Vec<Arc<str>>,
    },
    /// `object = "args"`: an object of the field's arguments, read by its fields as parent.
    Args,
}

/// Every resolver by `Type.field`, and which types are made of arguments.
pub struct Plans {
    pub resolvers: BTreeMap<(String, String), Arc<Resolver>>,
    /// Types an `object = "args"` field makes: their fields read those arguments.
    pub args_objects: BTreeMap<String, Vec<String>>,
    /// The route captures the templates read, for the routes serving the schema to have.
    pub captures: Vec<String>,
}

/// Compile `specs` against `model`; errors are (key under the schema's table, message).
pub fn compile(
    specs: &[ResolverSpec],
    model: &Model,
    pools: &BTreeMap<String, Arc<Upstream>>,
) -> Result<Plans, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut resolvers = BTreeMap::new();
    let mut args_objects: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut captures = Vec::new();
    // Which fields have a call, for `after` to be checked whatever the order of the list.
    let calls: Vec<(String, String)> = specs
        .iter()
        .filter(|s| s.object.is_none())
        .filter_map(|s| split_field(&s.field))
        .collect();
    for (i, spec) in specs.iter().enumerate() {
        let at = |key: &str| format!("resolvers[{i}].{key}");
        let Some((type_name, field_name)) = split_field(&spec.field) else {
            errors.push((
                at("field"),
                format!("\"{}\" must be Type.field", spec.field),
            ));
            continue;
        };
        let Some(field) = model.field(&type_name, &field_name) else {
            let what = if model.is_object(&type_name) {
                format!("{type_name} has no field \"{field_name}\"")
            } else {
                format!("the schema has no object type \"{type_name}\"")
            };
            errors.push((at("field"), what));
            continue;
        };
        if resolvers.contains_key(&(type_name.clone(), field_name.clone())) {
            errors.push((
                at("field"),
                format!("{} has a resolver already", spec.field),
            ));
            continue;
        }
        let resolver = match spec.object.as_deref() {
            Some("args") => {
                let target = named_type(&field.ty).to_string();
                if !model.is_object(&target) {
                    errors.push((at("object"), format!("{} is of type {target}, not an object type, so it cannot be an object of its arguments", spec.field)));
                    continue;
                }
                if spec.upstream.is_some() || spec.path.is_some() || spec.batch.is_some() {
                    errors.push((at("object"), "an object of its arguments makes no call: leave out upstream, path and batch".into()));
                    continue;
                }
                args_objects.insert(target, field.args.iter().map(|a| a.name.clone()).collect());
                Resolver::Args
            }
            Some(other) => {
                errors.push((
                    at("object"),
                    format!("\"{other}\": the only kind is \"args\""),
                ));
                continue;
            }
            None => {
                let scope = Scope {
                    field,
                    type_name: &type_name,
                    is_root: type_name == model.query
                        || model.mutation.as_deref() == Some(type_name.as_str()),
                    batched: spec.batch.is_some(),
                    after: &spec.after,
                };
                match compile_call(spec, &scope, pools, &mut captures, &at) {
                    Ok(call) => {
                        let batch = spec.batch.as_ref().and_then(|b| {
                            compile_batch(b, &scope, &at)
                                .map_err(|e| errors.push(e))
                                .ok()
                        });
                        for sibling in &spec.after {
                            if sibling == &field_name {
                                errors.push((at("after"), format!("\"{sibling}\" is this field")));
                            } else if model.field(&type_name, sibling).is_none() {
                                errors.push((
                                    at("after"),
                                    format!("{type_name} has no field \"{sibling}\""),
                                ));
                            } else if !calls.contains(&(type_name.clone(), sibling.clone())) {
                                errors.push((at("after"), format!("{type_name}.{sibling} makes no call of its own to wait for")));
                            }
                        }
                        if spec.batch.is_some() && !spec.after.is_empty() {
                            errors.push((
                                at("after"),
                                "a batched call reads no siblings (its parents differ)".into(),
                            ));
                        }
                        Resolver::Call {
                            call: Box::new(call),
                            batch,
                            after: spec.after.iter().map(|s| Arc::from(s.as_str())).collect(),
                        }
                    }
                    Err(mut e) => {
                        errors.append(&mut e);
                        continue;
                    }
                }
            }
        };
        resolvers.insert((type_name, field_name), Arc::new(resolver));
    }
    // A sibling waited for must not wait for this one in turn, nor read arguments it would
    // not have (it runs with the arguments of neither field).
    for ((type_name, field_name), resolver) in &resolvers {
        let Resolver::Call { after, .. } = resolver.as_ref() else {
            continue;
        };
        for sibling in after {
            let Some(theirs) = resolvers.get(&(type_name.clone(), sibling.to_string())) else {
                continue;
            };
            if let Resolver::Call {
                after: back,
                call,
                batch,
            } = theirs.as_ref()
            {
                if batch.is_some() {
                    errors.push((format!("resolvers.{type_name}.{field_name}"), format!("waits for {type_name}.{sibling}, which is batched over many parents: wait for a call of this object's own")));
                }
                if !back.is_empty() {
                    errors.push((format!("resolvers.{type_name}.{field_name}"), format!("waits for {type_name}.{sibling}, which waits for others itself: keep `after` one level deep")));
                }
                if call.sources().any(|s| matches!(s, Source::Arg(..))) {
                    errors.push((format!("resolvers.{type_name}.{field_name}"), format!("waits for {type_name}.{sibling}, whose call reads its own arguments: the wait has none to give it")));
                }
            }
        }
    }
    check_resolvable(model, &resolvers, &args_objects, &mut errors);
    captures.sort();
    captures.dedup();
    if errors.is_empty() {
        Ok(Plans {
            resolvers,
            args_objects,
            captures,
        })
    } else {
        Err(errors)
    }
}

/// Every field must be able to give a value: a root field needs a resolver (it has no parent
/// to read); a non-null field of an object of arguments must be one of those arguments.
fn check_resolvable(
    model: &Model,
    resolvers: &BTreeMap<(String, String), Arc<Resolver>>,
    args_objects: &BTreeMap<String, Vec<String>>,
    errors: &mut Vec<(String, String)>,
) {
    for root in std::iter::once(&model.query).chain(&model.mutation) {
        for field in model.fields(root).unwrap_or_default() {
            if !resolvers.contains_key(&(root.clone(), field.name.clone())) {
                errors.push((
                    "resolvers".into(),
                    format!("{root}.{} (schema {}:{}) has no resolver, and a root field has no parent to read it from", field.name, field.pos.line, field.pos.column),
                ));
            }
        }
    }
    for (type_name, args) in args_objects {
        for field in model.fields(type_name).unwrap_or_default() {
            let resolved = resolvers.contains_key(&(type_name.clone(), field.name.clone()));
            if !resolved && !field.ty.nullable && !args.contains(&field.name) {
                errors.push((
                    "resolvers".into(),
                    format!("{type_name}.{} (schema {}:{}) is non-null, but has no resolver and is not an argument of the field that makes {type_name}", field.name, field.pos.line, field.pos.column),
                ));
            }
        }
    }
}

impl Call {
    /// Every placeholder the call reads.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.path
            .sources()
            .chain(self.query.iter().flat_map(|(_, t)| t.sources()))
            .chain(self.headers.iter().flat_map(|(_, t)| t.sources()))
            .chain(self.body.iter().flat_map(Body::sources))
    }
}

impl Body {
    fn sources(&self) -> Box<dyn Iterator<Item = &Source> + '_> {
        match self {
            Body::Value(s) => Box::new(std::iter::once(s)),
            Body::Text(t) => Box::new(t.sources()),
            Body::Object(fields) => Box::new(fields.iter().flat_map(|(_, b)| b.sources())),
            Body::Array(items) => Box::new(items.iter().flat_map(Body::sources)),
            Body::Literal(_) => Box::new(std::iter::empty()),
        }
    }
}

/// What a field's templates may read.
struct Scope<'a> {
    field: &'a FieldDef,
    type_name: &'a str,
    is_root: bool,
    batched: bool,
    after: &'a [String],
}

fn compile_call(
    spec: &ResolverSpec,
    scope: &Scope<'_>,
    pools: &BTreeMap<String, Arc<Upstream>>,
    captures: &mut Vec<String>,
    at: &dyn Fn(&str) -> String,
) -> Result<Call, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let upstream = match spec.upstream.as_deref() {
        None => {
            errors.push((
                at("upstream"),
                format!(
                    "{} needs an upstream and a path (or object = \"args\")",
                    spec.field
                ),
            ));
            None
        }
        Some(name) => match pools.get(name) {
            None => {
                errors.push((at("upstream"), format!("no upstream named \"{name}\"")));
                None
            }
            // Calls are HTTP/1.1 exchanges of their own (`compose::client`).
            Some(pool) if pool.protocol != crate::config::UpstreamProtocol::H1 => {
                errors.push((at("upstream"), format!("\"{name}\" speaks {}: resolver calls go to HTTP/1.1 upstreams (TLS or not)", pool.protocol.as_str())));
                None
            }
            Some(pool) => Some(Arc::clone(pool)),
        },
    };
    let method = match spec.method.as_deref().unwrap_or("GET") {
        "GET" => Method::GET,
        "POST" => Method::POST,
        other => {
            errors.push((
                at("method"),
                format!("\"{other}\": a resolver calls with GET or POST"),
            ));
            Method::GET
        }
    };
    let mut template =
        |text: &str, key: String| match Template::parse_with(text, |name| classify(name, scope)) {
            Ok(t) => {
                for s in t.sources() {
                    if let Source::Capture(c) = s {
                        captures.push(c.clone());
                    }
                }
                Some(t)
            }
            Err(e) => {
                errors.push((key, e));
                None
            }
        };
    // A path that does not start with "/" is reported below, once.
    let path = spec
        .path
        .as_deref()
        .filter(|p| p.starts_with('/'))
        .and_then(|p| template(p, at("path")));
    let query: Vec<_> = spec
        .query
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), template(v, at(&format!("query.{k}")))?)))
        .collect();
    let mut headers = Vec::new();
    for (name, value) in &spec.headers {
        let parsed = template(value, at(&format!("headers.{name}")));
        // An invalid name is reported below, once.
        if let (Ok(n), Some(t)) = (HeaderName::from_bytes(name.as_bytes()), parsed) {
            headers.push((n, t));
        }
    }
    let body = match &spec.body {
        None => None,
        Some(_) if method == Method::GET => {
            errors.push((
                at("body"),
                "a GET call sends no body: set method = \"POST\"".into(),
            ));
            None
        }
        Some(value) => match json_body(value, scope) {
            Ok(b) => Some(b),
            Err(e) => {
                errors.push((at("body"), e));
                None
            }
        },
    };
    for name in spec.headers.keys() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push((at(&format!("headers.{name}")), "invalid header name".into()));
        }
    }
    match spec.path.as_deref() {
        None => errors.push((at("path"), format!("{} needs a path", spec.field))),
        Some(p) if !p.starts_with('/') => {
            errors.push((at("path"), format!("\"{p}\" must start with /")))
        }
        Some(_) => {}
    }
    match (errors.is_empty(), upstream, path) {
        (true, Some(upstream), Some(path)) => Ok(Call {
            upstream,
            method,
            path,
            query,
            headers,
            body,
            timeout: spec.timeout.map(|t| t.0),
        }),
        _ => Err(errors),
    }
}

fn compile_batch(
    spec: &BatchSpec,
    scope: &Scope<'_>,
    at: &dyn Fn(&str) -> String,
) -> Result<Batch, (String, String)> {
    if scope.is_root {
        return Err((
            at("batch"),
            "a root field has one parent: there is nothing to batch".into(),
        ));
    }
    let keys = match spec.keys.strip_prefix("parent.").map(parse_path) {
        Some(Ok(steps)) => steps,
        Some(Err(e)) => return Err((at("batch.keys"), e)),
        None => {
            return Err((
                at("batch.keys"),
                format!(
                    "\"{}\" must be parent.PATH: where each parent's keys are",
                    spec.keys
                ),
            ))
        }
    };
    let key = parse_path(&spec.key).map_err(|e| (at("batch.key"), e))?;
    if spec.max == 0 {
        return Err((at("batch.max"), "must be at least 1".into()));
    }
    Ok(Batch {
        keys,
        key,
        max: spec.max,
    })
}

fn json_body(value: &toml::Value, scope: &Scope<'_>) -> Result<Body, String> {
    Ok(match value {
        toml::Value::String(text) => {
            let t = Template::parse_with(text, |name| classify(name, scope))?;
            match t.only_source() {
                Some(s) => Body::Value(s.clone()),
                None => Body::Text(t),
            }
        }
        toml::Value::Table(table) => Body::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), json_body(v, scope)?)))
                .collect::<Result<_, String>>()?,
        ),
        toml::Value::Array(items) => Body::Array(
            items
                .iter()
                .map(|v| json_body(v, scope))
                .collect::<Result<_, String>>()?,
        ),
        other => Body::Literal(serde_json::to_value(other).map_err(|e| e.to_string())?),
    })
}

/// Classify one placeholder, or say why it has no value in this field's scope.
fn classify(name: &str, scope: &Scope<'_>) -> Result<Source, String> {
    let field = format!("{}.{}", scope.type_name, scope.field.name);
    if name == "keys" {
        return if scope.batched {
            Ok(Source::Keys)
        } else {
            Err(format!("{{keys}} is only known in a batched call (batch = {{ keys, key }}), and {field} is not one"))
        };
    }
    if name == "consumer" {
        return Ok(Source::Consumer);
    }
    if let Some(claim) = name.strip_prefix("claim.") {
        return Ok(Source::Claim(claim.to_string()));
    }
    let steps = parse_path(name)?;
    let (Some(Step::Field(first)), rest) = (steps.first(), steps.get(1..).unwrap_or_default())
    else {
        return Err(format!("\"{{{name}}}\" must start with a name"));
    };
    match first.as_str() {
        "args" => match rest.split_first() {
            Some((Step::Field(arg), path)) if scope.field.args.iter().any(|a| &a.name == arg) => {
                Ok(Source::Arg(arg.clone(), path.to_vec()))
            }
            Some((Step::Field(arg), _)) => Err(format!("{field} has no argument \"{arg}\"")),
            _ => Err(format!("\"{{{name}}}\" must name an argument: args.NAME")),
        },
        "parent" if scope.is_root => Err(format!("{field} is a root field: it has no parent")),
        "parent" if scope.batched => Err(format!(
            "{field} is batched over many parents: read them through batch.keys and {{keys}}"
        )),
        "parent" => Ok(Source::Parent(rest.to_vec())),
        "sibling" => match rest.split_first() {
            Some((Step::Field(sibling), path)) if scope.after.contains(sibling) => {
                Ok(Source::Sibling(sibling.clone(), path.to_vec()))
            }
            Some((Step::Field(sibling), _)) => Err(format!(
                "{{sibling.{sibling}}}: list \"{sibling}\" in after = [...] to read its answer"
            )),
            _ => Err(format!("\"{{{name}}}\" must name a sibling: sibling.NAME")),
        },
        capture if rest.is_empty() => Ok(Source::Capture(capture.to_string())),
        _ => Err(format!(
            "\"{{{name}}}\" is not args.NAME, parent.PATH, sibling.NAME, keys, consumer, claim.NAME or a path capture of the route"
        )),
    }
}

fn split_field(text: &str) -> Option<(String, String)> {
    let (t, f) = text.split_once('.')?;
    (!t.is_empty() && !f.is_empty() && !f.contains('.')).then(|| (t.to_string(), f.to_string()))
}
