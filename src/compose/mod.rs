//! Request composition: one client call fans out to several services and returns one merged
//! JSON object. Calls run in waves: every call whose dependencies are done runs at once, in
//! parallel; a call that reads another call's result waits for it (the calls form a DAG,
//! checked when the config is compiled). `for_each` runs a call once per element of an
//! earlier result's array, up to `max_fan_out`.
//!
//! The answer is `{ key: result, ... }`. A failed optional part is `null`, is listed in the
//! `Portico-Incomplete` header (keys, comma-separated), and has an entry in `_errors`:
//! `{"key": {"status": 503, "code": "upstream_unavailable"}}`. A failed required part makes
//! the whole answer a 502 problem naming the part. The whole composition has its own deadline.

pub mod client;
pub mod template;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::{HeaderName, Method};
use pingora_http::RequestHeader;
use portico_plugins::{Plugin, PluginCtx};
use serde_json::{Map, Value};

use crate::config::ComposeSpec;
use crate::upstream::live::Upstream;
use client::{PartError, Sender};
use template::{as_text, lookup, parse_path, Source, Step, Template};

pub struct Call {
    pub key: Arc<str>,
    pub upstream: Arc<Upstream>,
    method: Method,
    path: Template,
    query: Vec<(String, Template)>,
    headers: Vec<(HeaderName, Template)>,
    pub required: bool,
    timeout: Option<Duration>,
    /// The call and path of the array to fan out over.
    for_each: Option<(usize, Vec<Step>)>,
    max_fan_out: usize,
    deps: Vec<usize>,
}

pub struct Composition {
    timeout: Duration,
    pub calls: Vec<Call>,
}

impl Call {
    /// Whether the call runs once per item of an earlier answer (`for_each`), so its part of
    /// the answer is an array.
    pub fn fans_out(&self) -> bool {
        self.for_each.is_some()
    }
}

/// What a composition needs from the request.
pub struct Inputs<'a> {
    pub captures: &'a [(Arc<str>, String)],
    pub query: &'a str,
    pub cx: &'a PluginCtx,
}

/// What a composition came to: the merged answer, and every call that ran with whether it
/// succeeded (for `portico_compose_calls_total`).
pub struct Answer {
    pub merged: Merged,
    pub parts: Vec<(Arc<str>, bool)>,
}

/// The merged answer: the JSON body and the keys of the parts that failed.
pub enum Merged {
    Complete(Value, Vec<String>),
    /// A required part failed: its key and why.
    RequiredFailed(String, PartError),
}

impl Composition {
    /// Compile a `compose` table; errors are (key path under the route, message).
    pub fn compile(
        spec: &ComposeSpec,
        captures: &[String],
        pools: &std::collections::BTreeMap<String, Arc<Upstream>>,
    ) -> Result<Composition, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let keys: Vec<String> = spec.calls.iter().map(|c| c.key.clone()).collect();
        for (i, key) in keys.iter().enumerate() {
            if key.is_empty() || key.starts_with('_') || keys[..i].contains(key) {
                errors.push((
                    format!("compose.calls[{i}].key"),
                    format!("\"{key}\" must be unique, non-empty and not start with \"_\""),
                ));
            }
        }
        let mut calls = Vec::new();
        for (i, c) in spec.calls.iter().enumerate() {
            let at = |k: &str| format!("compose.calls[{i}].{k}");
            let path = template(&c.path, captures, &keys, at("path"), &mut errors);
            let query: Vec<_> = c
                .query
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.clone(),
                        template(v, captures, &keys, at(&format!("query.{k}")), &mut errors)?,
                    ))
                })
                .collect();
            let mut headers = Vec::new();
            for (name, value) in &c.headers {
                let parsed = template(
                    value,
                    captures,
                    &keys,
                    at(&format!("headers.{name}")),
                    &mut errors,
                );
                match (HeaderName::from_bytes(name.as_bytes()), parsed) {
                    (Ok(n), Some(t)) => headers.push((n, t)),
                    (Err(_), _) => {
                        errors.push((at(&format!("headers.{name}")), "invalid header name".into()))
                    }
                    _ => {}
                }
            }
            let method = match c.method.as_deref().unwrap_or("GET") {
                "GET" => Method::GET,
                other => {
                    errors.push((at("method"), format!("\"{other}\": calls are GET, which is safe to send in parallel and retry, and answers with a JSON body")));
                    Method::GET
                }
            };
            let upstream = pools.get(&c.upstream).cloned();
            match &upstream {
                None => errors.push((
                    at("upstream"),
                    format!("no upstream named \"{}\"", c.upstream),
                )),
                // Calls are HTTP/1.1 exchanges of their own (`compose::client`).
                Some(pool) if pool.protocol != crate::config::UpstreamProtocol::H1 => {
                    errors.push((
                        at("upstream"),
                        format!(
                        "\"{}\" speaks {}: composition calls go to HTTP/1.1 upstreams (TLS or not)",
                        c.upstream,
                        pool.protocol.as_str()
                    ),
                    ))
                }
                Some(_) => {}
            }
            let for_each = match &c.for_each {
                None => None,
                Some(text) => match parse_path(text) {
                    Ok(steps) => match steps.split_first() {
                        Some((Step::Field(key), rest)) if keys.contains(key) => Some((
                            keys.iter().position(|k| k == key).unwrap_or(0),
                            rest.to_vec(),
                        )),
                        _ => {
                            errors.push((
                                at("for_each"),
                                format!("\"{text}\" must start with another call's key"),
                            ));
                            None
                        }
                    },
                    Err(e) => {
                        errors.push((at("for_each"), e));
                        None
                    }
                },
            };
            let (Some(path), Some(upstream)) = (path, upstream) else {
                continue;
            };
            if for_each.is_none() && path.uses_item() {
                errors.push((at("path"), "{item} is only known in a for_each call".into()));
            }
            let mut deps: Vec<usize> = path
                .dependencies()
                .chain(query.iter().flat_map(|(_, t)| t.dependencies()))
                .chain(headers.iter().flat_map(|(_, t)| t.dependencies()))
                .filter_map(|k| keys.iter().position(|x| x == k))
                .chain(for_each.as_ref().map(|(d, _)| *d))
                .collect();
            deps.sort_unstable();
            deps.dedup();
            calls.push(Call {
                key: c.key.as_str().into(),
                upstream,
                method,
                path,
                query,
                headers,
                required: c.required,
                timeout: c.timeout.map(|t| t.0),
                for_each,
                max_fan_out: c.max_fan_out,
                deps,
            });
        }
        if errors.is_empty() {
            if let Some(cycle) = find_cycle(&calls) {
                errors.push((
                    "compose.calls".into(),
                    format!("the calls depend on each other in a cycle: {cycle}"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(Composition {
                timeout: spec.timeout.0,
                calls,
            })
        } else {
            Err(errors)
        }
    }

    /// Run every call and merge the answers.
    pub async fn run(
        &self,
        inputs: &Inputs<'_>,
        sender: &Sender<'_>,
        plugins: &[(Arc<str>, Arc<dyn Plugin>)],
        base: &RequestHeader,
    ) -> Answer {
        let deadline = Instant::now() + self.timeout;
        let mut results: Vec<Option<Result<Value, PartError>>> = vec![None; self.calls.len()];
        loop {
            let ready: Vec<usize> = (0..self.calls.len())
                .filter(|&i| {
                    results[i].is_none() && self.calls[i].deps.iter().all(|d| results[*d].is_some())
                })
                .collect();
            if ready.is_empty() {
                break;
            }
            let done = {
                let results = &results;
                join_all(ready.iter().map(|&i| async move {
                    (
                        i,
                        self.run_call(i, results, inputs, sender, plugins, base, deadline)
                            .await,
                    )
                }))
                .await
            };
            for (i, result) in done {
                results[i] = Some(result);
            }
        }
        let parts = self
            .calls
            .iter()
            .zip(&results)
            .filter_map(|(call, result)| {
                let result = result.as_ref()?;
                Some((Arc::clone(&call.key), result.is_ok()))
            })
            .collect();
        Answer {
            merged: self.merge(results),
            parts,
        }
    }

    fn merge(&self, results: Vec<Option<Result<Value, PartError>>>) -> Merged {
        let mut body = Map::new();
        let mut errors = Map::new();
        let mut failed = Vec::new();
        for (call, result) in self.calls.iter().zip(results) {
            match result.unwrap_or(Err(PartError::new("not_run"))) {
                Ok(value) => {
                    body.insert(call.key.to_string(), value);
                }
                Err(e) if call.required => return Merged::RequiredFailed(call.key.to_string(), e),
                Err(e) => {
                    body.insert(call.key.to_string(), Value::Null);
                    errors.insert(
                        call.key.to_string(),
                        serde_json::json!({ "status": e.status, "code": e.code }),
                    );
                    failed.push(call.key.to_string());
                }
            }
        }
        if !errors.is_empty() {
            body.insert("_errors".into(), Value::Object(errors));
        }
        Merged::Complete(Value::Object(body), failed)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_call(
        &self,
        i: usize,
        results: &[Option<Result<Value, PartError>>],
        inputs: &Inputs<'_>,
        sender: &Sender<'_>,
        plugins: &[(Arc<str>, Arc<dyn Plugin>)],
        base: &RequestHeader,
        deadline: Instant,
    ) -> Result<Value, PartError> {
        let call = &self.calls[i];
        for d in &call.deps {
            if !matches!(results[*d], Some(Ok(_))) {
                return Err(PartError::new("dependency_failed"));
            }
        }
        let deadline = call
            .timeout
            .map_or(deadline, |t| deadline.min(Instant::now() + t));
        let items: Vec<Option<Value>> = match &call.for_each {
            None => vec![None],
            Some((d, steps)) => {
                let array = results[*d]
                    .as_ref()
                    .and_then(|r| r.as_ref().ok())
                    .and_then(|v| lookup(v, steps));
                match array {
                    Some(Value::Array(items)) => items
                        .iter()
                        .take(call.max_fan_out)
                        .cloned()
                        .map(Some)
                        .collect(),
                    _ => return Err(PartError::new("for_each_not_an_array")),
                }
            }
        };
        let requests: Vec<_> = items
            .iter()
            .map(|item| self.request(call, item.as_ref(), results, inputs, base))
            .collect();
        let caller = client::Caller::of(inputs.cx);
        let mut sent = Vec::new();
        for request in requests {
            let mut request = request?;
            caller.shape(&mut request, plugins).await?;
            sent.push(request);
        }
        let answers = join_all(
            sent.iter()
                .map(|r| client::send(sender, &call.upstream, r, deadline)),
        )
        .await;
        let mut values = Vec::new();
        for answer in answers {
            let body = answer?;
            let value: Value =
                serde_json::from_slice(&body).map_err(|_| PartError::new("not_json"))?;
            values.push(value);
        }
        Ok(match call.for_each {
            Some(_) => Value::Array(values),
            None => values.pop().unwrap_or(Value::Null),
        })
    }

    fn request(
        &self,
        call: &Call,
        item: Option<&Value>,
        results: &[Option<Result<Value, PartError>>],
        inputs: &Inputs<'_>,
        base: &RequestHeader,
    ) -> Result<RequestHeader, PartError> {
        let resolve = |source: &Source| -> Option<String> {
            match source {
                Source::Capture(name) => inputs
                    .captures
                    .iter()
                    .find(|(n, _)| n.as_ref() == name)
                    .map(|(_, v)| v.clone()),
                Source::Query(name) => query_param(inputs.query, name),
                Source::Consumer => inputs.cx.identity.as_ref().map(|i| i.consumer.clone()),
                Source::Claim(name) => inputs.cx.claim(name).map(String::from),
                Source::Result(key, steps) => {
                    let d = self.calls.iter().position(|c| c.key.as_ref() == key)?;
                    as_text(lookup(results[d].as_ref()?.as_ref().ok()?, steps)?)
                }
                Source::Item(steps) => as_text(lookup(item?, steps)?),
            }
        };
        let escape = |s: String| {
            s.replace(
                |c: char| !(c.is_ascii_alphanumeric() || "-._~".contains(c)),
                "_",
            )
        };
        let resolve_segment = |source: &Source| resolve(source).map(escape);
        let mut uri = call
            .path
            .render(&resolve_segment)
            .map_err(|_| PartError::new("template_value_missing"))?;
        let mut query = Vec::new();
        for (name, template) in &call.query {
            let value = template
                .render(&resolve_segment)
                .map_err(|_| PartError::new("template_value_missing"))?;
            query.push(format!("{name}={value}"));
        }
        if !query.is_empty() {
            uri.push(if uri.contains('?') { '&' } else { '?' });
            uri.push_str(&query.join("&"));
        }
        let mut request = client::sub_request(call.method.clone(), &uri, base)?;
        for (name, template) in &call.headers {
            let value = template
                .render(&resolve)
                .map_err(|_| PartError::new("template_value_missing"))?;
            if value.chars().any(char::is_control) {
                return Err(PartError::new("bad_header_value"));
            }
            let _ = request.insert_header(name.clone(), value);
        }
        let _ = request.insert_header("accept", "application/json");
        Ok(request)
    }
}

/// Parse one template, recording its problem under `at`.
fn template(
    text: &str,
    captures: &[String],
    keys: &[String],
    at: String,
    errors: &mut Vec<(String, String)>,
) -> Option<Template> {
    match Template::parse(text, captures, keys) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push((at, e));
            None
        }
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// A cycle among the calls, as "a -> b -> a", if there is one.
fn find_cycle(calls: &[Call]) -> Option<String> {
    fn visit(
        i: usize,
        calls: &[Call],
        state: &mut Vec<u8>,
        stack: &mut Vec<usize>,
    ) -> Option<String> {
        state[i] = 1;
        stack.push(i);
        for &d in &calls[i].deps {
            if state[d] == 1 {
                let start = stack.iter().position(|&s| s == d).unwrap_or(0);
                let mut names: Vec<&str> = stack[start..]
                    .iter()
                    .map(|&s| calls[s].key.as_ref())
                    .collect();
                names.push(calls[d].key.as_ref());
                return Some(names.join(" -> "));
            }
            if state[d] == 0 {
                if let Some(c) = visit(d, calls, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state[i] = 2;
        None
    }
    let mut state = vec![0u8; calls.len()];
    (0..calls.len()).find_map(|i| {
        if state[i] == 0 {
            visit(i, calls, &mut state, &mut Vec::new())
        } else {
            None
        }
    })
}
