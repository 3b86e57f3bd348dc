//! The demo services behind `make run` and the benchmark backend behind `make bench`, as a
//! library: the `portico-backend` binary serves them on the addresses it is given, and the
//! gateway's integration tests serve them in-process on ephemeral ports (`start`).
//!
//! Any number of named listeners (`users=127.0.0.1:3001 ...`); every listener answers every
//! endpoint and tags its answers with `x-backend: NAME@ADDR`, so a demo through the gateway shows
//! which target answered. It is a benchmark backend first: the hot routes (`/` and `/ping`)
//! answer from static bytes with no logging and no allocation beyond hyper's own, so the backend
//! is never the bottleneck when the gateway is measured.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Largest `/bytes/{n}` answer; above it the client gets a 400.
const MAX_BYTES: usize = 16 * 1024 * 1024;
/// `/delay/{ms}` waits at most this long, so a typo cannot park a connection for hours.
const MAX_DELAY_MS: u64 = 60_000;
/// `/echo` returns the body as a string only below this size; it still counts every byte.
const ECHO_BODY_LIMIT: usize = 64 * 1024;

const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

type Resp = Response<Full<Bytes>>;

// ---------------------------------------------------------------------------------------------
// Dispatch: a pure function from method + path to what to answer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    /// `/` and `/ping`: the benchmark route.
    Ok,
    Health,
    Users,
    User(&'a str),
    Orders,
    Order(&'a str),
    UserOrders(&'a str),
    Products,
    Product(&'a str),
    /// Products picked for a user, for the composed dashboard of the demo.
    Recommendations(&'a str),
    /// `POST /recommendations` with `{"userId": .., "orders": [..]}`: the same picks, made
    /// from the orders sent (the GraphQL example's call that runs after the orders).
    RecommendFor,
    Echo,
    Bytes(usize),
    /// A JSON document of exactly `n` bytes, repetitive as API answers are (what `compress`
    /// and nginx's gzip are compared on).
    Json(usize),
    Delay(u64),
    Status(StatusCode),
    BadRequest(&'static str),
    NotFound,
}

fn dispatch<'a>(method: &Method, path: &'a str) -> Endpoint<'a> {
    if path == "/echo" || path.starts_with("/echo/") {
        return Endpoint::Echo;
    }
    if method == Method::POST && path == "/recommendations" {
        return Endpoint::RecommendFor;
    }
    // HEAD rides along with GET; hyper drops the body.
    if method != Method::GET && method != Method::HEAD {
        return Endpoint::NotFound;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Endpoint::NotFound;
    };
    // No endpoint has more than three segments; a fixed array keeps the hot path allocation-free.
    let mut segments = [""; 3];
    let mut count = 0;
    for segment in rest.split('/') {
        if count == segments.len() {
            return Endpoint::NotFound;
        }
        segments[count] = segment;
        count += 1;
    }
    match segments[..count] {
        [""] | ["ping"] => Endpoint::Ok,
        ["health"] => Endpoint::Health,
        ["users"] => Endpoint::Users,
        ["users", id] if !id.is_empty() => Endpoint::User(id),
        ["orders"] => Endpoint::Orders,
        ["orders", "user", id] if !id.is_empty() => Endpoint::UserOrders(id),
        ["orders", id] if !id.is_empty() => Endpoint::Order(id),
        ["products"] => Endpoint::Products,
        ["products", id] if !id.is_empty() => Endpoint::Product(id),
        ["recommendations", id] if !id.is_empty() => Endpoint::Recommendations(id),
        ["bytes", n] => match n.parse::<usize>() {
            Ok(n) if n <= MAX_BYTES => Endpoint::Bytes(n),
            Ok(_) => Endpoint::BadRequest("n must be at most 16777216 (16 MiB)"),
            Err(_) => Endpoint::BadRequest("n must be a non-negative integer"),
        },
        ["json", n] => match n.parse::<usize>() {
            Ok(n) if n <= MAX_BYTES => Endpoint::Json(n),
            Ok(_) => Endpoint::BadRequest("n must be at most 16777216 (16 MiB)"),
            Err(_) => Endpoint::BadRequest("n must be a non-negative integer"),
        },
        ["delay", ms] => match ms.parse::<u64>() {
            Ok(ms) => Endpoint::Delay(ms.min(MAX_DELAY_MS)),
            Err(_) => Endpoint::BadRequest("ms must be a non-negative integer"),
        },
        // 1xx are not final answers, so only 200..=599 make sense here.
        ["status", code] => match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
            Some(code) => match StatusCode::from_u16(code) {
                Ok(status) => Endpoint::Status(status),
                Err(_) => Endpoint::BadRequest("code must be between 200 and 599"),
            },
            None => Endpoint::BadRequest("code must be between 200 and 599"),
        },
        _ => Endpoint::NotFound,
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic fake data
// ---------------------------------------------------------------------------------------------

/// FNV-1a: a stable hash, so the same id always yields the same fake record across runs.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Money is computed in cents and only turned into a decimal at the end, so totals add up.
fn dollars(cents: u64) -> f64 {
    cents as f64 / 100.0
}

fn user(id: &str) -> Value {
    let tier = if fnv1a(id).is_multiple_of(4) {
        "premium"
    } else {
        "standard"
    };
    json!({
        "id": id,
        "name": format!("User {id}"),
        "email": format!("user{id}@example.com"),
        "tier": tier,
    })
}

fn product(id: &str) -> Value {
    let hash = fnv1a(id);
    json!({
        "id": id,
        "name": format!("Product {id}"),
        "price": dollars(199 + hash % 9_800),
        "currency": "USD",
        "in_stock": !hash.is_multiple_of(5),
    })
}

/// Order ids made by `/orders/user/{id}` look like `{user_id}-{n}`, so `/orders/{that id}` names
/// the same user; any other id gets a user derived from its hash.
fn order(id: &str) -> Value {
    let hash = fnv1a(id);
    let user_id = match id.rsplit_once('-') {
        Some((user_id, _)) if !user_id.is_empty() => user_id.to_owned(),
        _ => (hash % 1000 + 1).to_string(),
    };
    let item_count = 1 + hash % 3;
    let mut total_cents = 0;
    let items: Vec<Value> = (0..item_count)
        .map(|i| {
            let item_hash = hash.rotate_left(8 * i as u32 + 8);
            let quantity = 1 + item_hash % 4;
            let price_cents = 199 + (item_hash >> 8) % 4_800;
            total_cents += quantity * price_cents;
            json!({
                "product_id": ((item_hash >> 16) % 100 + 1).to_string(),
                "quantity": quantity,
                "price": dollars(price_cents),
            })
        })
        .collect();
    let product_ids: Vec<Value> = items.iter().map(|i| i["product_id"].clone()).collect();
    json!({
        "id": id,
        "user_id": user_id,
        "total": dollars(total_cents),
        "items": items,
        "product_ids": product_ids,
    })
}

fn user_orders(user_id: &str) -> Value {
    let count = 2 + fnv1a(user_id) % 2;
    Value::Array(
        (1..=count)
            .map(|n| order(&format!("{user_id}-{n}")))
            .collect(),
    )
}

/// Three distinct products for a user, best first, each with why it was picked.
fn recommendations(user_id: &str) -> Value {
    let hash = fnv1a(user_id);
    let first = hash % 98;
    let reasons = [
        "bought together",
        "popular in your area",
        "similar to your last order",
    ];
    Value::Array(
        (0..3)
            .map(|i| {
                // 1..=100, three apart from each other: never the same product twice.
                let id = ((first + 33 * i) % 100 + 1).to_string();
                let mut pick = product(&id);
                pick["score"] = json!(dollars(95 - 7 * i - hash % 5));
                pick["reason"] = json!(reasons[i as usize]);
                pick
            })
            .collect(),
    )
}

/// JSON bodies end with a newline so `curl` output in a demo terminal stays readable.
/// The ids of `ids=1,2,3` in a query string, at most 100 of them.
fn batch_ids(query: &str) -> Option<impl Iterator<Item = &str>> {
    let ids = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ids="))?;
    Some(ids.split(',').filter(|id| !id.is_empty()).take(100))
}

fn json_body(value: &Value) -> Bytes {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    Bytes::from(body)
}

/// One shared buffer of `x` for `/bytes/{n}`: every answer is a cheap slice of it. Built on first
/// use so a demo that never asks for bytes does not pay 16 MiB.
/// `[{"id":0,"name":"user 0","active":true},...]` padded with spaces to exactly `n` bytes,
/// from one document made once.
fn json_bytes(n: usize) -> Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    let doc = DOC.get_or_init(|| {
        let mut out = String::from("[");
        let mut i = 0;
        while out.len() < MAX_BYTES {
            out.push_str(&format!(
                "{{\"id\":{i},\"name\":\"user {i}\",\"active\":true}},"
            ));
            i += 1;
        }
        Bytes::from(out)
    });
    if n < 2 {
        return Bytes::from(vec![b' '; n]);
    }
    // Cut at the last whole object that fits, close the array, pad to n.
    let cut = doc[..n - 1]
        .iter()
        .rposition(|&b| b == b'}')
        .map_or(1, |i| i + 1);
    let mut out = Vec::with_capacity(n);
    out.extend_from_slice(&doc[..cut]);
    out.push(b']');
    out.resize(n, b' ');
    Bytes::from(out)
}

fn x_bytes(n: usize) -> Bytes {
    static XS: OnceLock<Bytes> = OnceLock::new();
    XS.get_or_init(|| Bytes::from(vec![b'x'; MAX_BYTES]))
        .slice(..n)
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/// One named listener's state. Leaked to `'static` at bind time: it lives as long as the process,
/// and a plain reference saves an `Arc` refcount round trip per request.
pub struct Backend {
    x_backend: HeaderValue,
    health: Bytes,
    users: Bytes,
    orders: Bytes,
    products: Bytes,
    http: http1::Builder,
}

impl Backend {
    fn new(name: &str, addr: SocketAddr) -> Result<Self, String> {
        let x_backend = HeaderValue::from_str(&format!("{name}@{addr}"))
            .map_err(|_| format!("{name:?} is not a valid header value"))?;
        // No timer is set, so hyper arms no per-request header-read timer; keep-alive is the
        // default and is what wrk measures.
        let mut http = http1::Builder::new();
        http.keep_alive(true);
        Ok(Backend {
            x_backend,
            health: json_body(&json!({"status": "ok", "service": name})),
            users: json_body(&Value::Array(["1", "2", "3"].map(user).into())),
            orders: json_body(&Value::Array(["1-1", "2-1", "3-1"].map(order).into())),
            products: json_body(&Value::Array(["1", "2", "3"].map(product).into())),
            http,
        })
    }

    fn respond(&self, status: StatusCode, content_type: HeaderValue, body: Bytes) -> Resp {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(X_BACKEND, self.x_backend.clone());
        // Content-Length comes from hyper: a `Full` body has an exact size hint.
        response
    }

    fn json(&self, status: StatusCode, value: &Value) -> Resp {
        self.respond(status, APPLICATION_JSON, json_body(value))
    }

    async fn handle(&'static self, request: Request<Incoming>) -> Result<Resp, Infallible> {
        let endpoint = dispatch(request.method(), request.uri().path());
        let ok = StatusCode::OK;
        Ok(match endpoint {
            Endpoint::Ok => self.respond(ok, TEXT_PLAIN, Bytes::from_static(b"ok\n")),
            Endpoint::Health => self.respond(ok, APPLICATION_JSON, self.health.clone()),
            Endpoint::Users => self.respond(ok, APPLICATION_JSON, self.users.clone()),
            Endpoint::Orders => self.respond(ok, APPLICATION_JSON, self.orders.clone()),
            // `/products?ids=1,2,3`: those products in one answer (a batch endpoint).
            Endpoint::Products => match request.uri().query().and_then(batch_ids) {
                Some(ids) => self.json(ok, &Value::Array(ids.map(product).collect())),
                None => self.respond(ok, APPLICATION_JSON, self.products.clone()),
            },
            Endpoint::User(id) => self.json(ok, &user(id)),
            Endpoint::Order(id) => self.json(ok, &order(id)),
            Endpoint::UserOrders(id) => self.json(ok, &user_orders(id)),
            Endpoint::Product(id) => self.json(ok, &product(id)),
            Endpoint::Recommendations(id) => self.json(ok, &recommendations(id)),
            Endpoint::RecommendFor => self.recommend_for(request).await,
            Endpoint::Echo => self.echo(request).await,
            Endpoint::Bytes(n) => self.respond(ok, OCTET_STREAM, x_bytes(n)),
            Endpoint::Json(n) => self.respond(ok, APPLICATION_JSON, json_bytes(n)),
            Endpoint::Delay(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.json(ok, &json!({"delayed_ms": ms}))
            }
            Endpoint::Status(status)
                if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED =>
            {
                // These two must not carry a body.
                let mut response = self.respond(status, APPLICATION_JSON, Bytes::new());
                response.headers_mut().remove(CONTENT_TYPE);
                response
            }
            Endpoint::Status(status) => self.json(status, &json!({"status": status.as_u16()})),
            Endpoint::BadRequest(why) => self.json(StatusCode::BAD_REQUEST, &json!({"error": why})),
            Endpoint::NotFound => self.respond(
                StatusCode::NOT_FOUND,
                APPLICATION_JSON,
                Bytes::from_static(b"{\"error\":\"not found\"}\n"),
            ),
        })
    }

    /// The picks for the `userId` of a JSON body, each saying how many orders it was made from.
    async fn recommend_for(&self, request: Request<Incoming>) -> Resp {
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return self.json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "unreadable body"}),
                )
            }
        };
        let Ok(sent) = serde_json::from_slice::<Value>(&body) else {
            return self.json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "the body must be JSON"}),
            );
        };
        let Some(user_id) = sent["userId"].as_str().filter(|id| !id.is_empty()) else {
            return self.json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "userId is missing"}),
            );
        };
        let orders = sent["orders"].as_array().map_or(0, Vec::len);
        let mut picks = recommendations(user_id);
        if let Value::Array(items) = &mut picks {
            for pick in items {
                pick["based_on_orders"] = json!(orders);
            }
        }
        self.json(StatusCode::OK, &picks)
    }

    /// Answers with what arrived, so gateway tests can see exactly what was forwarded.
    async fn echo(&self, request: Request<Incoming>) -> Resp {
        let (parts, mut body) = request.into_parts();
        // Count every byte but keep only a small body: a large upload must not be buffered.
        let mut body_bytes = 0usize;
        let mut kept: Option<Vec<u8>> = Some(Vec::new());
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return self.json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "request body could not be read"}),
                );
            };
            if let Ok(data) = frame.into_data() {
                body_bytes += data.len();
                if let Some(buf) = kept.as_mut() {
                    if buf.len() + data.len() < ECHO_BODY_LIMIT {
                        buf.extend_from_slice(&data);
                    } else {
                        kept = None;
                    }
                }
            }
        }
        let body_text = kept
            .and_then(|buf| String::from_utf8(buf).ok())
            .map_or(Value::Null, Value::String);

        let mut headers = serde_json::Map::new();
        for name in parts.headers.keys() {
            let values: Vec<_> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect();
            headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
        }
        self.json(
            StatusCode::OK,
            &json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query().unwrap_or(""),
                "headers": headers,
                "body_bytes": body_bytes,
                "body": body_text,
            }),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners
// ---------------------------------------------------------------------------------------------

/// Binds one named listener. `x-backend` names the bound address, so `:0` shows the real port.
pub async fn bind(name: &str, addr: &str) -> Result<(TcpListener, &'static Backend), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot bind {name} to {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the address of {name}: {e}"))?;
    let backend: &'static Backend = Box::leak(Box::new(Backend::new(name, local)?));
    Ok((listener, backend))
}

/// Serves `backend` on `listener` until the task is dropped (each connection runs in a task of
/// its own, so connections already open outlive it).
pub async fn serve(listener: TcpListener, backend: &'static Backend) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning on the same error.
                eprintln!("portico-backend: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small answers must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |request| backend.handle(request));
            // Clients that reset or vanish mid-request are routine under load: not worth a line.
            let _ = backend
                .http
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `name` on `addr` (`127.0.0.1:0` for an ephemeral port) and serves it on the current
/// tokio runtime: the address it listens on, and the task serving it.
pub async fn start(
    name: &str,
    addr: &str,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let (listener, backend) = bind(name, addr).await?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the address of {name}: {e}"))?;
    Ok((local, tokio::spawn(serve(listener, backend))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn json_documents_are_valid_json_of_exactly_the_length_asked() {
        for n in [0, 1, 2, 100, 16384] {
            let doc = json_bytes(n);
            assert_eq!(doc.len(), n);
            if n >= 2 {
                let value: Value = serde_json::from_slice(&doc).unwrap();
                assert!(value.is_array());
            }
        }
    }

    #[test]
    fn dispatch_table() {
        let get = Method::GET;
        let cases: &[(&Method, &str, Endpoint)] = &[
            (&get, "/", Endpoint::Ok),
            (&get, "/ping", Endpoint::Ok),
            (&Method::HEAD, "/", Endpoint::Ok),
            (&get, "/health", Endpoint::Health),
            (&get, "/users", Endpoint::Users),
            (&get, "/users/42", Endpoint::User("42")),
            (&get, "/users/", Endpoint::NotFound),
            (&get, "/users/42/extra", Endpoint::NotFound),
            (&get, "/orders", Endpoint::Orders),
            (&get, "/orders/7", Endpoint::Order("7")),
            (&get, "/orders/user/42", Endpoint::UserOrders("42")),
            (&get, "/orders/user", Endpoint::Order("user")),
            (&get, "/products", Endpoint::Products),
            (&get, "/products/abc", Endpoint::Product("abc")),
            (&get, "/recommendations/42", Endpoint::Recommendations("42")),
            (&get, "/recommendations", Endpoint::NotFound),
            (&Method::POST, "/recommendations", Endpoint::RecommendFor),
            (&get, "/echo", Endpoint::Echo),
            (&Method::POST, "/echo", Endpoint::Echo),
            (&Method::DELETE, "/echo/a/b/c/d", Endpoint::Echo),
            (&get, "/echoes", Endpoint::NotFound),
            (&get, "/bytes/16384", Endpoint::Bytes(16384)),
            (&get, "/json/16384", Endpoint::Json(16384)),
            (&get, "/bytes/0", Endpoint::Bytes(0)),
            (&get, "/bytes/16777216", Endpoint::Bytes(MAX_BYTES)),
            (
                &get,
                "/bytes/16777217",
                Endpoint::BadRequest("n must be at most 16777216 (16 MiB)"),
            ),
            (
                &get,
                "/bytes/lots",
                Endpoint::BadRequest("n must be a non-negative integer"),
            ),
            (&get, "/delay/250", Endpoint::Delay(250)),
            (&get, "/delay/999999", Endpoint::Delay(MAX_DELAY_MS)),
            (
                &get,
                "/status/503",
                Endpoint::Status(StatusCode::SERVICE_UNAVAILABLE),
            ),
            (
                &get,
                "/status/100",
                Endpoint::BadRequest("code must be between 200 and 599"),
            ),
            (
                &get,
                "/status/600",
                Endpoint::BadRequest("code must be between 200 and 599"),
            ),
            (&Method::POST, "/users", Endpoint::NotFound),
            (&get, "/nope", Endpoint::NotFound),
            (&get, "/a/b/c/d", Endpoint::NotFound),
            (&get, "*", Endpoint::NotFound),
        ];
        for (method, path, want) in cases {
            assert_eq!(&dispatch(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn fake_data_is_deterministic_and_consistent() {
        assert_eq!(user("42"), user("42"));
        assert_eq!(user("42")["email"], "user42@example.com");
        let orders = user_orders("42");
        let orders = orders.as_array().unwrap();
        assert!((2..=3).contains(&orders.len()));
        for listed in orders {
            assert_eq!(listed["user_id"], "42");
            // The same order fetched by id is the same record.
            assert_eq!(*listed, order(listed["id"].as_str().unwrap()));
            let items = listed["items"].as_array().unwrap();
            let sum: f64 = items
                .iter()
                .map(|i| i["quantity"].as_f64().unwrap() * i["price"].as_f64().unwrap())
                .sum();
            assert!((sum - listed["total"].as_f64().unwrap()).abs() < 0.005);
        }
        let picks = recommendations("42");
        let picks = picks.as_array().unwrap();
        assert_eq!(picks.len(), 3);
        let ids: std::collections::HashSet<_> = picks.iter().map(|p| p["id"].clone()).collect();
        assert_eq!(ids.len(), 3, "three different products: {picks:?}");
        assert_eq!(recommendations("42"), recommendations("42"));
    }

    struct RawResponse {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl RawResponse {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A raw HTTP/1.1 exchange: `Connection: close` lets the response end at EOF.
    async fn fetch(addr: SocketAddr, request: &str) -> RawResponse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = std::str::from_utf8(&raw[..split]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_owned(), v.trim().to_owned())
            })
            .collect();
        RawResponse {
            status: status.parse().unwrap(),
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    #[tokio::test]
    async fn serves_health_and_echo_over_tcp() {
        let (listener, backend) = bind("test", "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, backend));

        let health = fetch(
            addr,
            "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(health.status, 200);
        assert_eq!(health.header("content-type"), Some("application/json"));
        assert_eq!(
            health.header("x-backend"),
            Some(format!("test@{addr}").as_str())
        );
        assert_eq!(
            health.header("content-length"),
            Some(health.body.len().to_string().as_str())
        );
        let body: Value = serde_json::from_slice(&health.body).unwrap();
        assert_eq!(body, json!({"status": "ok", "service": "test"}));

        let echo = fetch(
            addr,
            "POST /echo/x?a=1&b=2 HTTP/1.1\r\nHost: t\r\nX-Multi: one\r\nX-Multi: two\r\n\
             Content-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert_eq!(echo.status, 200);
        let body: Value = serde_json::from_slice(&echo.body).unwrap();
        assert_eq!(body["method"], "POST");
        assert_eq!(body["path"], "/echo/x");
        assert_eq!(body["query"], "a=1&b=2");
        assert_eq!(body["headers"]["x-multi"], "one, two");
        assert_eq!(body["headers"]["host"], "t");
        assert_eq!(body["body_bytes"], 5);
        assert_eq!(body["body"], "hello");

        let ok = fetch(
            addr,
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("content-type"), Some("text/plain"));
        assert_eq!(ok.body, b"ok\n");

        // `make bench` measures 16 KiB answers on this path.
        let bytes = fetch(
            addr,
            "GET /bytes/16384 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(bytes.status, 200);
        assert_eq!(bytes.header("content-length"), Some("16384"));
        assert_eq!(bytes.body, vec![b'x'; 16384]);

        let missing = fetch(
            addr,
            "GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(missing.status, 404);
    }
}
