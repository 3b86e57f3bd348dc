//! Resolving fields while async-graphql executes a query: each field reads its parent's JSON,
//! makes its call, or takes its part of a batched call, and its value goes back to the engine
//! typed as the schema says.
//!
//! Three things keep a query's calls few and ordered:
//! - **Identical calls made once.** Every call goes through the query's memo, keyed by what
//!   is sent (upstream, method, path, headers, body); a second asker awaits the first one's
//!   answer.
//! - **Siblings waited for.** A field with `after = ["recentOrders"]` asks the memo for its
//!   sibling's call first, so it runs after that call and reads its answer, and the sibling
//!   itself, resolved at the same time, gets the same answer without a second call.
//! - **Batches.** The objects of one list are one group. A batched field of any of them
//!   collects the keys of every object in the group and makes one call per `max` keys, the
//!   first asker for the group making it and the others awaiting it. Grouping by the list
//!   (not by a timer, as a DataLoader does) makes the batch exact: a user's 20 orders of 5
//!   products are one products call, whatever the scheduling.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_graphql::dynamic::{FieldFuture, FieldValue, ResolverContext};
use async_graphql::{ErrorExtensions, Name, ServerError, Value as GqlValue};
use bytes::Bytes;
use futures_util::future::join_all;
use pingora_http::RequestHeader;
use portico_plugins::{Plugin, PluginCtx};
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::plan::{Batch, Body, Call, Resolver, Source};
use crate::compose::client::{self, Caller, PartError, Sender};
use crate::compose::template::{as_text, lookup, Step};
use crate::state::GatewayState;

/// What a field's value is, as the schema types it.
#[derive(Debug, Clone)]
pub enum Out {
    NonNull(Box<Out>),
    List(Box<Out>),
    Object,
    Enum,
    Scalar(Scalar),
}

#[derive(Debug, Clone, Copy)]
pub enum Scalar {
    Int,
    Float,
    String,
    Boolean,
    Id,
    /// A scalar the schema declares: passed through as the service gave it.
    Custom,
}

/// One field of the schema, with what it needs at run time.
pub struct FieldPlan {
    /// Unique in the schema: the key of this field's batches.
    pub id: usize,
    pub name: Arc<str>,
    pub out: Out,
    pub resolver: Option<Arc<Resolver>>,
    /// The calls of the siblings in `after`, by field name.
    pub siblings: Vec<(Arc<str>, Arc<Resolver>)>,
}

/// Everything one query's resolvers share: where calls go, for whom, and what was asked
/// already. Made per query; only its own resolvers touch its locks, never across `.await`.
pub struct QueryState {
    pub gateway: Arc<GatewayState>,
    pub trace: Option<crate::trace::SpanParent>,
    pub deadline: Instant,
    /// The client's request with the headers every call carries (`X-Forwarded-*`, the
    /// request id, `traceparent`): copied onto each call.
    pub base: RequestHeader,
    pub captures: Vec<(Arc<str>, String)>,
    pub caller: Caller,
    pub plugins: Vec<(Arc<str>, Arc<dyn Plugin>)>,
    memo: Mutex<HashMap<CallKey, Arc<OnceCell<Fetched>>>>,
}

type Fetched = Result<Arc<Value>, CallFailure>;
type CallKey = (usize, String, Bytes);

/// A call that failed, and the upstream it went to (for the error's message).
#[derive(Debug, Clone)]
pub struct CallFailure {
    upstream: Arc<str>,
    error: PartError,
}

/// The JSON objects of one list (or one object alone), which batch together.
pub struct Group {
    items: Vec<Value>,
    batches: Mutex<HashMap<BatchKey, Arc<OnceCell<Batched>>>>,
}

/// A batch of one group: the field's id and its arguments (as JSON text).
type BatchKey = (usize, String);

/// A batch's answer: each item by the text of its key.
type Batched = Result<Arc<HashMap<String, Value>>, CallFailure>;

/// An object being resolved: one item of its group.
pub struct Node {
    group: Arc<Group>,
    index: usize,
}

impl Node {
    fn alone(json: Value) -> Node {
        Node {
            group: Arc::new(Group::new(vec![json])),
            index: 0,
        }
    }

    fn json(&self) -> &Value {
        &self.group.items[self.index]
    }
}

impl Group {
    fn new(items: Vec<Value>) -> Group {
        Group {
            items,
            batches: Mutex::new(HashMap::new()),
        }
    }
}

impl QueryState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gateway: Arc<GatewayState>,
        trace: Option<crate::trace::SpanParent>,
        deadline: Instant,
        base: RequestHeader,
        captures: Vec<(Arc<str>, String)>,
        cx: &PluginCtx,
        plugins: Vec<(Arc<str>, Arc<dyn Plugin>)>,
    ) -> QueryState {
        QueryState {
            gateway,
            trace,
            deadline,
            base,
            captures,
            caller: Caller::of(cx),
            plugins,
            memo: Mutex::new(HashMap::new()),
        }
    }
}

/// The resolver of `plan`'s field, as async-graphql calls it.
pub fn resolve<'a>(ctx: ResolverContext<'a>, plan: Arc<FieldPlan>) -> FieldFuture<'a> {
    let parent = ctx.parent_value.downcast_ref::<Node>();
    match plan.resolver.as_deref() {
        // Read from the parent's JSON: no call, nothing to wait for.
        None => {
            let json = parent
                .and_then(|p| p.json().get(plan.name.as_ref()))
                .cloned()
                .unwrap_or(Value::Null);
            match to_field_value(json, &plan.out) {
                Ok(value) => FieldFuture::Value(value),
                Err(e) => FieldFuture::new(async move { Err::<Option<FieldValue<'a>>, _>(e) }),
            }
        }
        Some(Resolver::Args) => {
            let args = args_json(&ctx);
            FieldFuture::Value(Some(FieldValue::owned_any(Node::alone(Value::Object(
                args,
            )))))
        }
        Some(Resolver::Call { .. }) => FieldFuture::new(async move {
            // Matched again in here: the future owns `plan`, and the match above borrows it.
            let Some(Resolver::Call { call, batch, .. }) = plan.resolver.as_deref() else {
                return Ok(None);
            };
            resolve_call(&ctx, &plan, call, batch.as_ref()).await
        }),
    }
}

async fn resolve_call<'a>(
    ctx: &ResolverContext<'a>,
    plan: &FieldPlan,
    call: &Call,
    batch: Option<&Batch>,
) -> async_graphql::Result<Option<FieldValue<'a>>> {
    let state = ctx.data::<QueryState>()?;
    let parent = ctx.parent_value.downcast_ref::<Node>();
    let args = args_json(ctx);
    let null = Value::Null;
    let parent_json = parent.map_or(&null, Node::json);
    if let (Some(batch), Some(parent)) = (batch, parent) {
        return resolve_batched(ctx, state, plan, call, batch, &args, parent).await;
    }
    let mut siblings = Vec::new();
    for (name, resolver) in &plan.siblings {
        if let Resolver::Call { call: theirs, .. } = resolver.as_ref() {
            let scope = Scope {
                args: &Map::new(),
                parent: parent_json,
                siblings: &[],
                keys: None,
            };
            let answer = state
                .fetch(theirs, &scope)
                .await
                .map_err(|e| e.to_error())?;
            siblings.push((Arc::clone(name), answer));
        }
    }
    let scope = Scope {
        args: &args,
        parent: parent_json,
        siblings: &siblings,
        keys: None,
    };
    let answer = state.fetch(call, &scope).await.map_err(|e| e.to_error())?;
    to_field_value(Value::clone(&answer), &plan.out)
}

/// This parent's part of the batch its group makes for this field.
async fn resolve_batched<'a>(
    ctx: &ResolverContext<'a>,
    state: &QueryState,
    plan: &FieldPlan,
    call: &Call,
    batch: &Batch,
    args: &Map<String, Value>,
    parent: &Node,
) -> async_graphql::Result<Option<FieldValue<'a>>> {
    let cell = {
        let key = (plan.id, Value::Object(args.clone()).to_string());
        let mut batches = parent
            .group
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::clone(batches.entry(key).or_default())
    };
    let items = cell
        .get_or_init(|| fetch_batch(state, call, batch, args, &parent.group))
        .await
        .as_ref()
        .map_err(CallFailure::to_error)?;
    let mine = keys_of(parent.json(), &batch.keys);
    let (list, item_out) = match &plan.out {
        Out::NonNull(inner) => match inner.as_ref() {
            Out::List(item) => (true, item.as_ref()),
            other => (false, other),
        },
        Out::List(item) => (true, item.as_ref()),
        other => (false, other),
    };
    let mut found = Vec::with_capacity(mine.len());
    let mut missing = Vec::new();
    for key in &mine {
        match as_text(key).and_then(|k| items.get(&k).map(|v| (k, v))) {
            Some((_, item)) => found.push(item.clone()),
            None => {
                missing.push(as_text(key).unwrap_or_else(|| key.to_string()));
                found.push(Value::Null);
            }
        }
    }
    let error = |keys: &[String]| {
        async_graphql::Error::new(format!(
            "the {} service gave no item for key {}",
            call.upstream.name,
            keys.join(", ")
        ))
        .extend_with(|_, e| e.set("code", "BATCH_KEY_MISSING"))
    };
    if !list {
        return match found.pop() {
            Some(Value::Null) | None if !missing.is_empty() => Err(error(&missing)),
            Some(item) => to_field_value(item, &plan.out),
            None => Ok(None),
        };
    }
    if !missing.is_empty() {
        // A non-null item type cannot hold the gap: the list becomes null (and so on up, as
        // GraphQL's rules say); a nullable one keeps its other items.
        if matches!(item_out, Out::NonNull(_)) {
            return Err(error(&missing));
        }
        let e = error(&missing).into_server_error(ctx.item.pos);
        ctx.add_error(ctx.set_error_path(ServerError { ..e }));
    }
    to_field_value(Value::Array(found), &plan.out)
}

/// Every distinct key of the group's objects, in `max`-sized calls at once, merged by key.
async fn fetch_batch(
    state: &QueryState,
    call: &Call,
    batch: &Batch,
    args: &Map<String, Value>,
    group: &Group,
) -> Batched {
    let mut seen = HashSet::new();
    let keys: Vec<Value> = group
        .items
        .iter()
        .flat_map(|item| keys_of(item, &batch.keys))
        .filter(|k| as_text(k).is_some_and(|t| seen.insert(t)))
        .collect();
    let null = Value::Null;
    let answers = join_all(keys.chunks(batch.max).map(|chunk| {
        let scope = Scope {
            args,
            parent: &null,
            siblings: &[],
            keys: Some(chunk),
        };
        async move { state.fetch(call, &scope).await }
    }))
    .await;
    let mut items = HashMap::new();
    for answer in answers {
        let answer = answer?;
        let Value::Array(list) = answer.as_ref() else {
            return Err(CallFailure {
                upstream: Arc::clone(&call.upstream.name),
                error: PartError::new("batch_not_a_list"),
            });
        };
        for item in list {
            if let Some(key) = lookup(item, &batch.key).and_then(as_text) {
                items.insert(key, item.clone());
            }
        }
    }
    Ok(Arc::new(items))
}

/// A parent's keys: the list at `steps`, or the one value there.
fn keys_of(json: &Value, steps: &[Step]) -> Vec<Value> {
    match lookup(json, steps) {
        Some(Value::Array(keys)) => keys.iter().filter(|k| !k.is_null()).cloned().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(key) => vec![key.clone()],
    }
}

/// What one call's templates read.
struct Scope<'s> {
    args: &'s Map<String, Value>,
    parent: &'s Value,
    siblings: &'s [(Arc<str>, Arc<Value>)],
    keys: Option<&'s [Value]>,
}

impl QueryState {
    /// Make `call` with `scope`, or share the answer of the same call made already.
    async fn fetch(&self, call: &Call, scope: &Scope<'_>) -> Fetched {
        let failed = |code| CallFailure {
            upstream: Arc::clone(&call.upstream.name),
            error: PartError::new(code),
        };
        let (head, body) = self.render(call, scope).map_err(failed)?;
        let key = (
            Arc::as_ptr(&call.upstream) as usize,
            request_text(&head),
            body.clone(),
        );
        let cell = {
            let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(memo.entry(key).or_default())
        };
        cell.get_or_init(|| self.send(call, head, body))
            .await
            .clone()
    }

    async fn send(&self, call: &Call, mut head: RequestHeader, body: Bytes) -> Fetched {
        let failed = |error| CallFailure {
            upstream: Arc::clone(&call.upstream.name),
            error,
        };
        self.caller
            .shape(&mut head, &self.plugins)
            .await
            .map_err(failed)?;
        let deadline = call
            .timeout
            .map_or(self.deadline, |t| self.deadline.min(Instant::now() + t));
        let sender = Sender {
            transport: &self.gateway.transport,
            requests: &self.gateway.metrics.upstream_requests,
            trace: self.trace.clone(),
        };
        let answer = if call.body.is_some() {
            client::send_once(&sender, &call.upstream, &head, body, deadline).await
        } else {
            client::send(&sender, &call.upstream, &head, deadline).await
        };
        let answer = answer.map_err(failed)?;
        serde_json::from_slice(&answer)
            .map(Arc::new)
            .map_err(|_| failed(PartError::new("not_json")))
    }

    /// The call's request head and body, its templates filled from `scope`.
    fn render(
        &self,
        call: &Call,
        scope: &Scope<'_>,
    ) -> Result<(RequestHeader, Bytes), &'static str> {
        let value = |s: &Source| self.value(s, scope);
        let segment = |s: &Source| -> Option<String> {
            match (s, scope.keys) {
                (Source::Keys, Some(keys)) => Some(
                    keys.iter()
                        .filter_map(as_text)
                        .map(|k| encode(&k))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                _ => value(s).as_deref().and_then(as_text).map(|t| encode(&t)),
            }
        };
        let mut uri = call
            .path
            .render(&segment)
            .map_err(|_| "template_value_missing")?;
        for (i, (name, template)) in call.query.iter().enumerate() {
            let v = template
                .render(&segment)
                .map_err(|_| "template_value_missing")?;
            uri.push(if i == 0 && !uri.contains('?') {
                '?'
            } else {
                '&'
            });
            uri.push_str(&encode(name));
            uri.push('=');
            uri.push_str(&v);
        }
        let mut head =
            client::sub_request(call.method.clone(), &uri, &self.base).map_err(|e| e.code)?;
        let text = |s: &Source| value(s).as_deref().and_then(as_text);
        for (name, template) in &call.headers {
            let v = template
                .render(&text)
                .map_err(|_| "template_value_missing")?;
            if v.chars().any(char::is_control) {
                return Err("bad_header_value");
            }
            let _ = head.insert_header(name.clone(), v);
        }
        let _ = head.insert_header(http::header::ACCEPT, "application/json");
        let body = match &call.body {
            None => Bytes::new(),
            Some(template) => {
                let json = self.body(template, scope)?;
                let _ = head.insert_header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(json.to_string())
            }
        };
        if !body.is_empty() {
            let _ = head.insert_header(http::header::CONTENT_LENGTH, body.len());
        }
        Ok((head, body))
    }

    fn body(&self, template: &Body, scope: &Scope<'_>) -> Result<Value, &'static str> {
        Ok(match template {
            Body::Value(Source::Keys) => Value::Array(scope.keys.unwrap_or_default().to_vec()),
            Body::Value(s) => self
                .value(s, scope)
                .ok_or("template_value_missing")?
                .into_owned(),
            Body::Text(t) => Value::String(
                t.render(&|s| self.value(s, scope).as_deref().and_then(as_text))
                    .map_err(|_| "template_value_missing")?,
            ),
            Body::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, b)| Ok((k.clone(), self.body(b, scope)?)))
                    .collect::<Result<_, &'static str>>()?,
            ),
            Body::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|b| self.body(b, scope))
                    .collect::<Result<_, _>>()?,
            ),
            Body::Literal(v) => v.clone(),
        })
    }

    /// A placeholder's value in `scope`.
    fn value<'s>(&'s self, source: &Source, scope: &'s Scope<'_>) -> Option<Cow<'s, Value>> {
        let owned = |s: String| Some(Cow::Owned(Value::String(s)));
        match source {
            Source::Arg(name, steps) => lookup(scope.args.get(name)?, steps).map(Cow::Borrowed),
            Source::Parent(steps) => lookup(scope.parent, steps).map(Cow::Borrowed),
            Source::Sibling(name, steps) => {
                let (_, answer) = scope.siblings.iter().find(|(n, _)| n.as_ref() == name)?;
                lookup(answer, steps).map(Cow::Borrowed)
            }
            Source::Keys => scope.keys.map(|k| Cow::Owned(Value::Array(k.to_vec()))),
            Source::Capture(name) => self
                .captures
                .iter()
                .find(|(n, _)| n.as_ref() == name)
                .and_then(|(_, v)| owned(v.clone())),
            Source::Consumer => owned(self.caller.identity.as_ref()?.consumer.clone()),
            Source::Claim(name) => owned(self.caller.identity.as_ref()?.claims.get(name)?.clone()),
        }
    }
}

impl CallFailure {
    /// The GraphQL error of a failed call: a stable `extensions.code`, the service's status
    /// when it answered, and never an address.
    fn to_error(&self) -> async_graphql::Error {
        let code = self.error.code.to_ascii_uppercase();
        let message = match (self.error.code, self.error.status) {
            ("upstream_error", Some(status)) => {
                format!("the {} service answered {status}", self.upstream)
            }
            (code, _) => format!("the {} service failed ({code})", self.upstream),
        };
        let status = self.error.status;
        async_graphql::Error::new(message).extend_with(move |_, e| {
            e.set("code", code.as_str());
            if let Some(status) = status {
                e.set("status", status);
            }
        })
    }
}

/// The field's arguments as JSON (with their defaults), for templates and `object = "args"`.
fn args_json(ctx: &ResolverContext<'_>) -> Map<String, Value> {
    ctx.args
        .iter()
        .filter_map(|(name, v)| Some((name.to_string(), v.as_value().clone().into_json().ok()?)))
        .collect()
}

/// A service's JSON as the value of a field of type `out`.
pub fn to_field_value<'a>(json: Value, out: &Out) -> async_graphql::Result<Option<FieldValue<'a>>> {
    let wrong = |expected: &str, got: &Value| {
        async_graphql::Error::new(format!(
            "the service gave {} where the schema has {expected}",
            kind_of(got)
        ))
        .extend_with(|_, e| e.set("code", "UPSTREAM_TYPE_MISMATCH"))
    };
    match out {
        Out::NonNull(inner) => match to_field_value(json, inner)? {
            Some(value) => Ok(Some(value)),
            None => Err(
                async_graphql::Error::new("the service gave null for a non-null field")
                    .extend_with(|_, e| e.set("code", "UPSTREAM_TYPE_MISMATCH")),
            ),
        },
        _ if json.is_null() => Ok(None),
        Out::List(item) => {
            let Value::Array(items) = json else {
                return Err(wrong("a list", &json));
            };
            let objects = matches!(strip(item), Out::Object);
            if objects {
                if let Some(bad) = items.iter().find(|i| !(i.is_object() || i.is_null())) {
                    return Err(wrong("objects", bad));
                }
                let nullable = !matches!(item.as_ref(), Out::NonNull(_));
                if !nullable && items.iter().any(Value::is_null) {
                    return Err(async_graphql::Error::new(
                        "the service gave null in a list of non-null items",
                    )
                    .extend_with(|_, e| e.set("code", "UPSTREAM_TYPE_MISMATCH")));
                }
                let nulls: Vec<bool> = items.iter().map(Value::is_null).collect();
                let group = Arc::new(Group::new(items));
                let values = nulls.into_iter().enumerate().map(|(index, null)| {
                    if null {
                        FieldValue::NULL
                    } else {
                        FieldValue::owned_any(Node {
                            group: Arc::clone(&group),
                            index,
                        })
                    }
                });
                return Ok(Some(FieldValue::list(values)));
            }
            let values = items
                .into_iter()
                .map(|i| Ok(to_field_value(i, item)?.unwrap_or(FieldValue::NULL)))
                .collect::<async_graphql::Result<Vec<_>>>()?;
            Ok(Some(FieldValue::list(values)))
        }
        Out::Object if json.is_object() => Ok(Some(FieldValue::owned_any(Node::alone(json)))),
        Out::Object => Err(wrong("an object", &json)),
        Out::Enum => match json {
            Value::String(s) => Ok(Some(FieldValue::value(GqlValue::Enum(Name::new(s))))),
            other => Err(wrong("an enum value", &other)),
        },
        Out::Scalar(scalar) => scalar_value(json, *scalar)
            .map(|v| Some(FieldValue::value(v)))
            .ok_or_else(|| {
                async_graphql::Error::new("the service gave a value of another type")
                    .extend_with(|_, e| e.set("code", "UPSTREAM_TYPE_MISMATCH"))
            }),
    }
}

fn strip(out: &Out) -> &Out {
    match out {
        Out::NonNull(inner) => strip(inner),
        other => other,
    }
}

/// A JSON value as a scalar, coerced as GraphQL's result coercion allows (an ID from a
/// number, an Int from a whole float, a String from a number or boolean).
fn scalar_value(json: Value, scalar: Scalar) -> Option<GqlValue> {
    match (scalar, json) {
        (Scalar::Int, Value::Number(n)) => {
            let i = n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 2f64.powi(31))
                    .map(|f| f as i64)
            })?;
            i32::try_from(i).ok().map(GqlValue::from)
        }
        (Scalar::Float, Value::Number(n)) => n.as_f64().map(GqlValue::from),
        (Scalar::String | Scalar::Id, Value::String(s)) => Some(GqlValue::String(s)),
        (Scalar::Id, Value::Number(n)) if n.is_i64() || n.is_u64() => {
            Some(GqlValue::String(n.to_string()))
        }
        (Scalar::String, Value::Number(n)) => Some(GqlValue::String(n.to_string())),
        (Scalar::String, Value::Bool(b)) => Some(GqlValue::String(b.to_string())),
        (Scalar::Boolean, Value::Bool(b)) => Some(GqlValue::Boolean(b)),
        (Scalar::Custom, json) => GqlValue::from_json(json).ok(),
        _ => None,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Percent-encode all but RFC 3986's unreserved characters, so a value from a query cannot
/// reach another path or add parameters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What identifies a request for the memo: its method, target and headers.
fn request_text(head: &RequestHeader) -> String {
    let mut text = format!("{} {}", head.method, head.uri);
    for (name, value) in head.headers.iter() {
        text.push('\n');
        text.push_str(name.as_str());
        text.push(':');
        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_coerced_as_graphql_allows_and_refused_otherwise() {
        assert_eq!(
            scalar_value(json!(7), Scalar::Id),
            Some(GqlValue::String("7".into()))
        );
        assert_eq!(
            scalar_value(json!(3.0), Scalar::Int),
            Some(GqlValue::from(3))
        );
        assert_eq!(scalar_value(json!(3.5), Scalar::Int), None);
        assert_eq!(scalar_value(json!(1u64 << 40), Scalar::Int), None);
        assert_eq!(scalar_value(json!("x"), Scalar::Boolean), None);
        assert_eq!(
            scalar_value(json!(true), Scalar::String),
            Some(GqlValue::String("true".into()))
        );
        assert!(to_field_value(
            json!(null),
            &Out::NonNull(Box::new(Out::Scalar(Scalar::Int)))
        )
        .is_err());
        assert!(to_field_value(json!(null), &Out::Scalar(Scalar::Int))
            .unwrap()
            .is_none());
        assert!(to_field_value(json!([1, "a"]), &Out::List(Box::new(Out::Object))).is_err());
    }

    #[test]
    fn template_values_cannot_leave_their_path_segment() {
        assert_eq!(encode("42"), "42");
        assert_eq!(encode("../admin?x=1&y"), "..%2Fadmin%3Fx%3D1%26y");
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
