//! An API client, or a docs portal, reads what the gateway serves from `GET /openapi.json` on
//! the admin listener: an OpenAPI 3.1 document made from the config. A real validator
//! (openapi-spec-validator, which scripts/ensure-deps.sh installs) has the last word on
//! whether it is OpenAPI; the tests check that it says what the config says.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{upstream::spawn_ok, Gateway};

/// The methods a route without `methods` is listed with (src/admin/openapi.rs).
const ANY_METHOD: [&str; 6] = ["get", "head", "post", "put", "patch", "delete"];

#[tokio::test(flavor = "multi_thread")]
async fn every_shipped_config_is_described_by_a_valid_openapi_document() {
    let secrets = crate::config_cli::ShippedEnv::new();
    let env = secrets.vars();
    let files = crate::config_cli::shipped_configs();
    assert!(files.len() > 1, "{files:?}");
    for file in files {
        let what = file.display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        let gw =
            Gateway::start_with_env(&files_from(&on_free_ports(&text, &what), dir), &env).await;
        let resp = gw
            .client
            .get(gw.admin_url("/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{what}");
        let doc: Value = resp.json().await.unwrap();
        assert_valid_openapi(&doc, &what);
        let config: toml::Value = text.parse().unwrap();
        every_route_is_listed_with_its_security(&doc, &config, &what);
    }
}

/// A shipped config as the kit runs it: its fixed listeners (`make run`'s ports) on free ones,
/// and its upgrade socket in the test's own folder, so tests can run side by side.
fn on_free_ports(text: &str, what: &str) -> String {
    // The config many instances share takes its ports from each instance's environment.
    if text.contains("${PORTICO_PORT}") {
        return text
            .replace("\"127.0.0.1:${PORTICO_PORT}\"", "\"${PORTICO_LISTEN}\"")
            .replace(
                "\"127.0.0.1:${PORTICO_ADMIN_PORT}\"",
                "\"${PORTICO_ADMIN}\"",
            )
            .replace(
                "\"${PORTICO_RUN_DIR}/upgrade.sock\"",
                "\"${PORTICO_UPGRADE_SOCK}\"",
            );
    }
    for fixed in ["\"127.0.0.1:8080\"", "\"127.0.0.1:9901\""] {
        assert!(
            text.contains(fixed),
            "{what}: expected {fixed}; teach this test its ports"
        );
    }
    text.replace("\"127.0.0.1:8080\"", "\"${PORTICO_LISTEN}\"")
        .replace("\"127.0.0.1:9901\"", "\"${PORTICO_ADMIN}\"")
        .replace("\"127.0.0.1:8443\"", "\"${PORTICO_TLS}\"")
        .replacen(
            "[server]\n",
            "[server]\nupgrade_sock = \"${PORTICO_UPGRADE_SOCK}\"\n",
            1,
        )
}

/// The files a shipped config names relative to itself (a GraphQL schema) found from the
/// test's own folder: their absolute paths.
fn files_from(text: &str, dir: &std::path::Path) -> String {
    text.replace("schema = \"", &format!("schema = \"{}/", dir.display()))
}

/// Every `[[routes]]` entry of the config file has an operation for each of its methods, with
/// its captures as path parameters and the credentials its plugins demand.
fn every_route_is_listed_with_its_security(doc: &Value, config: &toml::Value, what: &str) {
    let routes = config["routes"].as_array().unwrap();
    let listed: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    let mut expected_operations = 0;
    for route in routes {
        let name = route["name"].as_str().unwrap();
        let path = route["path"].as_str().unwrap();
        let item = &doc["paths"][path];
        assert!(
            item.is_object(),
            "{what}: route {name} ({path}) is not listed"
        );
        let methods: Vec<String> = match route.get("methods") {
            Some(methods) => methods
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_ascii_lowercase())
                .collect(),
            None => ANY_METHOD.iter().map(|m| m.to_string()).collect(),
        };
        expected_operations += methods.len();
        let captures: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let security = expected_security(config, route);
        for method in &methods {
            let op = &item[method];
            assert_eq!(op["x-portico-route"], name, "{what}: {method} {path}");
            let parameters: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(parameters, captures, "{what}: {method} {path} parameters");
            assert_eq!(op["security"], security, "{what}: {method} {path} security");
            // Whoever checks credentials can refuse them, and says so in problem+json.
            if security != json!([]) {
                assert_eq!(
                    op["responses"]["401"]["$ref"], "#/components/responses/unauthorized",
                    "{what}: {method} {path}"
                );
            }
        }
    }
    // CORS preflights are the one operation a route adds beyond its methods.
    let preflights = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .filter(|item| item.get("options").is_some())
        .count();
    assert_eq!(
        listed,
        expected_operations + preflights,
        "{what}: operations of no route"
    );
    // Every scheme a requirement names is defined, as the plugin's kind says.
    for route in routes {
        for plugin in route
            .get("plugins")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            let name = plugin.as_str().unwrap();
            let scheme = &doc["components"]["securitySchemes"][name];
            match config["plugins"][name]["kind"].as_str().unwrap() {
                "jwt" => {
                    assert_eq!(scheme["type"], "http", "{what}: {name}");
                    assert_eq!(scheme["scheme"], "bearer", "{what}: {name}");
                    assert_eq!(scheme["bearerFormat"], "JWT", "{what}: {name}");
                }
                "api_key" => {
                    let header = config["plugins"][name]
                        .get("header")
                        .and_then(|h| h.as_str())
                        .unwrap_or("x-api-key");
                    assert_eq!(scheme["type"], "apiKey", "{what}: {name}");
                    assert_eq!(scheme["in"], "header", "{what}: {name}");
                    assert_eq!(scheme["name"], header, "{what}: {name}");
                }
                _ => assert!(scheme.is_null(), "{what}: {name} demands no credentials"),
            }
        }
    }
}

/// What the config says a route's callers present, as an OpenAPI security list: each item an
/// alternative, each naming every scheme it needs. A `jwt` plugin needs its bearer token
/// with its `required_scopes`; an `api_key` plugin its key, in the header or, where it takes
/// `query`, in the query instead; a route without either needs nothing (`[]`).
fn expected_security(config: &toml::Value, route: &toml::Value) -> Value {
    let mut alternatives: Vec<serde_json::Map<String, Value>> = vec![Default::default()];
    for plugin in route
        .get("plugins")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        let name = plugin.as_str().unwrap();
        let spec = &config["plugins"][name];
        let either: Vec<(String, Value)> = match spec["kind"].as_str().unwrap() {
            "jwt" => {
                let scopes = spec.get("required_scopes").map_or(json!([]), |s| {
                    json!(s
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap())
                        .collect::<Vec<_>>())
                });
                vec![(name.to_string(), scopes)]
            }
            "api_key" => {
                let mut either = vec![(name.to_string(), json!([]))];
                if spec.get("query").is_some() {
                    either.push((format!("{name}.query"), json!([])));
                }
                either
            }
            _ => continue,
        };
        alternatives = alternatives
            .iter()
            .flat_map(|all| {
                either.iter().map(move |(scheme, scopes)| {
                    let mut all = all.clone();
                    all.insert(scheme.clone(), scopes.clone());
                    all
                })
            })
            .collect();
    }
    json!(alternatives
        .into_iter()
        .filter(|all| !all.is_empty())
        .collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_beyond_the_shipped_ones_are_described_too_and_reloads_change_the_document() {
    // A route of each shape the shipped configs lack: a host, a header condition, captures
    // named differently on the same path shape, a WebSocket, a fallback, two plugins that both
    // demand credentials, and a rate limit.
    let up = spawn_ok("app").await;
    let files = tempfile::tempdir().unwrap();
    let fallback = files.path().join("fallback.json");
    std::fs::write(&fallback, "{\"items\":[]}").unwrap();
    let config = |extra: &str| {
        format!(
            r#"
[consumers.acme]
api_keys = ["acme-example-key-123"]

[upstreams.app]
targets = ["{addr}"]

[plugins.bearer]
kind = "jwt"
algorithms = ["HS256"]
secret = "an-example-secret-of-at-least-32-bytes"
required_scopes = ["orders:read", "orders:write"]

[plugins.key]
kind = "api_key"
query = "api_key"

[plugins.limit]
kind = "rate_limit"
limit = 10
window = "1m"

[[routes]]
name = "tenant-orders"
host = "*.shop.example"
path = "/tenants/{{tenant}}/orders/{{order}}"
methods = ["GET", "DELETE"]
upstream = "app"
plugins = ["bearer", "key", "limit"]

[[routes]]
name = "beta-orders"
host = "beta.shop.example"
path = "/tenants/{{t}}/orders/{{o}}"
methods = ["GET"]
headers = {{ "x-beta" = "1" }}
upstream = "app"

[[routes]]
name = "socket"
path = "/ws"
methods = ["GET"]
websocket = true
upstream = "app"

[[routes]]
name = "catalog"
path = "/catalog"
methods = ["GET"]
upstream = "app"
fallback = {{ status = 200, body_file = "{fallback}" }}
{extra}"#,
            addr = up.addr,
            fallback = fallback.display()
        )
    };
    let gw = Gateway::start(&config("")).await;
    let doc = gw.admin_json("/openapi.json").await;
    assert_valid_openapi(&doc, "the edge-case config");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["servers"][0]["url"], gw.url(""));

    // Both credentials at once, each as it may be presented: the token with its scopes and the
    // key in its header or in the query.
    let path = &doc["paths"]["/tenants/{tenant}/orders/{order}"];
    let get = &path["get"];
    assert_eq!(
        get["security"],
        json!([
            { "bearer": ["orders:read", "orders:write"], "key": [] },
            { "bearer": ["orders:read", "orders:write"], "key.query": [] },
        ])
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["key.query"]["in"],
        "query"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["key.query"]["name"],
        "api_key"
    );
    // The errors each plugin may answer, and the limit's headers on every answer.
    for (status, code) in [
        ("401", "unauthorized"),
        ("403", "forbidden"),
        ("429", "rate_limited"),
        ("503", "upstream_unavailable"),
    ] {
        assert_eq!(
            get["responses"][status]["$ref"],
            format!("#/components/responses/{code}")
        );
    }
    let limited = &doc["components"]["responses"]["rate_limited"];
    assert!(limited["headers"]["Retry-After"].is_object());
    assert!(limited["content"]["application/problem+json"]["schema"].is_object());
    assert!(get["responses"]["2XX"]["headers"]["RateLimit-Remaining"].is_object());
    // A wildcard host is a server variable.
    assert_eq!(
        get["servers"][0]["url"],
        format!("http://{{subdomain}}.shop.example:{}", gw.addr.port())
    );
    assert!(path["delete"].is_object() && path["post"].is_null());

    // The same path shape with other capture names is one path (OpenAPI allows no other):
    // the beta route's GET shares the first route's operation, which names it.
    assert!(doc["paths"]["/tenants/{t}/orders/{o}"].is_null());
    let description = get["description"].as_str().unwrap();
    assert!(description.contains("beta-orders"), "{description}");

    // A WebSocket route upgrades; a fallback route answers its stand-in instead of 502-504.
    assert!(doc["paths"]["/ws"]["get"]["responses"]["101"].is_object());
    let catalog = &doc["paths"]["/catalog"]["get"]["responses"];
    assert!(catalog["200"]["content"]["application/json"].is_object());
    assert!(catalog["503"].is_null() && catalog["502"].is_null());

    // A reload is described at once: the document is the config serving now.
    let extra = r#"
[[routes]]
name = "status-mirror"
path = "/mirror/{code}"
upstream = "app"
"#;
    std::fs::write(
        &gw.config_path,
        crate::common::gateway::with_defaults(&config(extra)),
    )
    .unwrap();
    assert_eq!(gw.reload().await.status(), 200);
    let doc = gw.admin_json("/openapi.json").await;
    assert_valid_openapi(&doc, "the reloaded config");
    let any = &doc["paths"]["/mirror/{code}"];
    for method in ANY_METHOD {
        assert_eq!(any[method]["x-portico-route"], "status-mirror", "{method}");
        assert_eq!(any[method]["x-portico-any-method"], true, "{method}");
    }
    assert_eq!(any["get"]["security"], json!([]), "an open route says so");
    assert_eq!(doc["x-portico-generation"], 2);

    // The status page, where people start, links to it.
    let page = gw.client.get(gw.admin_url("/")).send().await.unwrap();
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("href=\"/openapi.json\""));
}

/// The validator: on PATH, or where scripts/ensure-deps.sh installs it when it is not.
fn validator() -> PathBuf {
    let on_path = Command::new("openapi-spec-validator")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if on_path {
        return PathBuf::from("openapi-spec-validator");
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/tools/openapi-spec-validator/bin/openapi-spec-validator");
    assert!(
        venv.is_file(),
        "openapi-spec-validator is not installed (on PATH or at {}): run scripts/ensure-deps.sh",
        venv.display()
    );
    venv
}

/// `doc` passes openapi-spec-validator, which reads the `openapi` field and checks the document
/// against that version's schema and rules (path parameters declared, references resolved).
fn assert_valid_openapi(doc: &Value, what: &str) {
    assert_eq!(doc["openapi"], "3.1.0", "{what}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let out = Command::new(validator())
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.contains(": OK"),
        "{what}: /openapi.json is not a valid OpenAPI document:\n{said}\n{}",
        serde_json::to_string_pretty(doc).unwrap()
    );
}
