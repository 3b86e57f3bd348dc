//! `kind = "compress"`: answers compressed with gzip, br or zstd by the client's
//! `Accept-Encoding`, streaming, on both drivers and on cache hits. The cache keeps the
//! upstream's own bytes once and each client gets them in the coding it asked for: one stored
//! copy serves every `Accept-Encoding`, and a purge or revalidation has one entry to deal with.
//! The encoders are Pingora's (over flate2, brotli and zstd); what is decided here is whether
//! and which.

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, TRANSFER_ENCODING, VARY,
};
use http::{HeaderValue, Method};
use pingora_core::protocols::http::compression::{Algorithm, Encode};
use pingora_http::{RequestHeader, ResponseHeader};
use portico_plugins::units::ByteSize;
use serde::Deserialize;

/// The plugin's table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_min_size")]
    pub min_size: ByteSize,
}

fn default_algorithms() -> Vec<String> {
    ["br", "zstd", "gzip"].map(String::from).to_vec()
}

fn default_min_size() -> ByteSize {
    ByteSize(1024)
}

/// A compiled `compress` plugin.
#[derive(Debug)]
pub struct CompressPolicy {
    /// In the operator's order of preference.
    algorithms: Vec<Coding>,
    min_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Br,
    Zstd,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// Levels for compressing on the fly: gzip 1 (nginx's `gzip_comp_level` default), brotli
    /// 4 and zstd 3 (each about as fast as gzip 6 and smaller).
    fn encoder(self) -> Option<Box<dyn Encode + Send + Sync>> {
        match self {
            Coding::Gzip => Algorithm::Gzip.compressor(1),
            Coding::Br => Some(Box::new(Brotli::new(4))),
            Coding::Zstd => Algorithm::Zstd.compressor(3),
        }
    }
}

/// Brotli, streamed. Pingora's brotli encoder only flushes at the end, so its stream never
/// gets its last meta-block and a strict decoder refuses it ("Invalid Data"); this one ends
/// the stream there.
struct Brotli {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
}

impl Brotli {
    fn new(level: u32) -> Brotli {
        // 4 KiB of buffer; a 2^19-byte window, as Pingora and most servers use.
        Brotli {
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 19)),
        }
    }
}

impl Encode for Brotli {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora_error::Result<Bytes> {
        use pingora_error::{ErrorType, OrErr};
        use std::io::Write;
        let Some(writer) = self.writer.as_mut() else {
            return pingora_error::Error::e_explain(
                ErrorType::InternalError,
                "brotli stream already ended",
            );
        };
        writer
            .write_all(input)
            .or_err(ErrorType::InternalError, "while compressing with brotli")?;
        let out = if end {
            // Ending the stream writes its last meta-block.
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(writer.get_mut())
        };
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, std::time::Duration) {
        ("brotli", 0, 0, std::time::Duration::ZERO)
    }
}

impl CompressPolicy {
    pub fn compile(config: CompressConfig) -> Result<CompressPolicy, String> {
        let mut algorithms = Vec::new();
        for name in &config.algorithms {
            let coding = match name.as_str() {
                "gzip" => Coding::Gzip,
                "br" => Coding::Br,
                "zstd" => Coding::Zstd,
                other => return Err(format!("algorithms: \"{other}\" is not gzip, br or zstd")),
            };
            if algorithms.contains(&coding) {
                return Err(format!("algorithms: \"{name}\" is listed twice"));
            }
            algorithms.push(coding);
        }
        if algorithms.is_empty() {
            return Err("algorithms: needs at least one of gzip, br, zstd".into());
        }
        Ok(CompressPolicy {
            algorithms,
            min_size: config.min_size.0,
        })
    }

    /// Decide for one answer: `Some(encoder)` when its body is to be compressed, with `resp`
    /// changed to say so. `Vary: Accept-Encoding` goes on every answer that could have been
    /// compressed, so a cache after Portico keeps the codings apart.
    pub fn start(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
    ) -> Option<Box<dyn Encode + Send + Sync>> {
        if req.method == Method::HEAD || !eligible(resp, self.min_size) {
            return None;
        }
        add_vary(resp);
        let coding = self.choose(req.headers.get(ACCEPT_ENCODING)?)?;
        let encoder = coding.encoder()?;
        resp.remove_header(&CONTENT_LENGTH);
        resp.remove_header(&ACCEPT_RANGES);
        // Streamed: the length is not known ahead. (HTTP/2 drops this and frames by itself.)
        let _ = resp.insert_header(TRANSFER_ENCODING, "chunked");
        let _ = resp.insert_header(CONTENT_ENCODING, coding.name());
        weaken_etag(resp);
        Some(encoder)
    }

    /// The coding for this `Accept-Encoding`: the highest q-value among the configured ones
    /// (a coding not named takes `*`'s, else it is not acceptable), ties going to the
    /// operator's order. `None`: identity it is.
    fn choose(&self, accept: &HeaderValue) -> Option<Coding> {
        let accept = accept.to_str().ok()?;
        let mut star = None;
        let mut named: Vec<(&str, f32)> = Vec::new();
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or_default().trim();
            let q = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| v.trim().parse::<f32>().ok())?
                })
                .unwrap_or(1.0);
            if token == "*" {
                star = Some(q);
            } else if !token.is_empty() {
                named.push((token, q));
            }
        }
        let q_of = |c: Coding| {
            named
                .iter()
                .find(|(t, _)| t.eq_ignore_ascii_case(c.name()))
                .map(|(_, q)| *q)
                .or(star)
                .unwrap_or(0.0)
        };
        let mut best: Option<(Coding, f32)> = None;
        for &coding in &self.algorithms {
            let q = q_of(coding);
            if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((coding, q));
            }
        }
        best.map(|(c, _)| c)
    }
}

/// Whether an answer may be compressed at all: a whole, unencoded body of a compressible
/// type, at least `min_size` when its length is known, that its origin lets be transformed.
fn eligible(resp: &ResponseHeader, min_size: u64) -> bool {
    let status = resp.status.as_u16();
    if status < 200 || matches!(status, 204 | 206 | 304) {
        return false;
    }
    let headers = &resp.headers;
    if headers.contains_key(CONTENT_ENCODING) || headers.contains_key(CONTENT_RANGE) {
        return false;
    }
    let no_transform = headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    });
    if no_transform {
        return false;
    }
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n < min_size) {
        return false;
    }
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(compressible_type)
}

/// Text and the structured formats APIs answer with; not images, video, archives or fonts
/// already compressed.
fn compressible_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/xml"
                | "application/x-ndjson"
                | "application/graphql-response+json"
                | "application/wasm"
                | "image/svg+xml"
                | "image/x-icon"
                | "font/ttf"
                | "font/otf"
        )
}

fn add_vary(resp: &mut ResponseHeader) {
    let present = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|f| {
                let f = f.trim();
                f == "*" || f.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !present {
        let _ = resp.append_header(VARY, "Accept-Encoding");
    }
}

/// A compressed body is another representation: a strong validator becomes weak (as nginx
/// does), and one that is not a valid entity tag is dropped.
fn weaken_etag(resp: &mut ResponseHeader) {
    let Some(etag) = resp.headers.get(ETAG) else {
        return;
    };
    let bytes = etag.as_bytes();
    if bytes.starts_with(b"W/") {
        return;
    }
    match bytes
        .starts_with(b"\"")
        .then(|| HeaderValue::from_bytes(&[b"W/", bytes].concat()).ok())
        .flatten()
    {
        Some(weak) => {
            let _ = resp.insert_header(ETAG, weak);
        }
        None => {
            resp.remove_header(&ETAG);
        }
    }
}

/// A response body on its way to the client, compressed when the answer's head said so.
/// Compression that fails mid-way ends the answer (its bytes so far cannot be taken back).
pub fn body(
    encoder: &mut (dyn Encode + Send + Sync),
    body: &mut Option<Bytes>,
    end: bool,
) -> pingora_error::Result<()> {
    let input = body.as_deref().unwrap_or_default();
    let output = encoder.encode(input, end)?;
    *body = (!output.is_empty()).then_some(output);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(algorithms: &[&str]) -> CompressPolicy {
        CompressPolicy::compile(CompressConfig {
            algorithms: algorithms.iter().map(|s| s.to_string()).collect(),
            min_size: ByteSize(1024),
        })
        .unwrap()
    }

    fn chosen(p: &CompressPolicy, accept: &str) -> Option<&'static str> {
        p.choose(&HeaderValue::from_str(accept).unwrap())
            .map(Coding::name)
    }

    #[test]
    fn q_values_decide_and_ties_go_to_the_operators_order() {
        let p = policy(&["br", "zstd", "gzip"]);
        assert_eq!(chosen(&p, "gzip, deflate, br, zstd"), Some("br"));
        assert_eq!(chosen(&p, "gzip"), Some("gzip"));
        assert_eq!(chosen(&p, "gzip;q=1.0, br;q=0.5"), Some("gzip"));
        assert_eq!(chosen(&p, "br;q=0, gzip;q=0.1"), Some("gzip"));
        assert_eq!(chosen(&p, "*"), Some("br"));
        assert_eq!(chosen(&p, "*;q=0.5, zstd"), Some("zstd"));
        assert_eq!(chosen(&p, "*;q=0, gzip;q=0"), None);
        assert_eq!(chosen(&p, "identity"), None);
        assert_eq!(chosen(&p, "deflate"), None);
        assert_eq!(chosen(&p, "GZIP; Q=0.8"), Some("gzip"));
        let gzip_only = policy(&["gzip"]);
        assert_eq!(chosen(&gzip_only, "br, zstd"), None);
    }

    #[test]
    fn bad_algorithm_lists_are_refused() {
        for (list, expected) in [
            (vec!["deflate"], "\"deflate\" is not gzip, br or zstd"),
            (vec!["gzip", "gzip"], "listed twice"),
            (vec![], "needs at least one"),
        ] {
            let err = CompressPolicy::compile(CompressConfig {
                algorithms: list.iter().map(|s| s.to_string()).collect(),
                min_size: ByteSize(0),
            })
            .unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    fn answer(headers: &[(&str, &str)], status: u16) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            resp.append_header(k.to_string(), *v).unwrap();
        }
        resp
    }

    #[test]
    fn only_whole_unencoded_compressible_answers_are_eligible() {
        let json = [("content-type", "application/json; charset=utf-8")];
        assert!(eligible(&answer(&json, 200), 1024));
        assert!(eligible(
            &answer(&[("content-type", "application/problem+json")], 404),
            1024
        ));
        assert!(!eligible(
            &answer(&[("content-type", "image/png")], 200),
            1024
        ));
        assert!(!eligible(&answer(&[], 200), 1024), "no type: unknown bytes");
        assert!(!eligible(&answer(&json, 206), 1024));
        assert!(!eligible(&answer(&json, 304), 1024));
        let small = [("content-type", "text/html"), ("content-length", "1023")];
        assert!(!eligible(&answer(&small, 200), 1024));
        let encoded = [("content-type", "text/html"), ("content-encoding", "gzip")];
        assert!(!eligible(&answer(&encoded, 200), 1024));
        let kept = [
            ("content-type", "text/html"),
            ("cache-control", "public, no-transform"),
        ];
        assert!(!eligible(&answer(&kept, 200), 1024));
    }

    #[test]
    fn the_head_says_what_the_body_became() {
        let p = policy(&["gzip"]);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("accept-encoding", "gzip").unwrap();
        let mut resp = answer(
            &[
                ("content-type", "text/plain"),
                ("content-length", "5000"),
                ("etag", "\"v1\""),
                ("accept-ranges", "bytes"),
                ("vary", "Origin"),
            ],
            200,
        );
        assert!(p.start(&req, &mut resp).is_some());
        assert_eq!(resp.headers["content-encoding"], "gzip");
        assert_eq!(resp.headers["etag"], "W/\"v1\"");
        assert!(resp.headers.get("content-length").is_none());
        assert!(resp.headers.get("accept-ranges").is_none());
        let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);

        // A client that takes no coding gets the bytes as they are, and the Vary.
        let plain = RequestHeader::build("GET", b"/", None).unwrap();
        let mut resp = answer(&[("content-type", "text/plain")], 200);
        assert!(p.start(&plain, &mut resp).is_none());
        assert_eq!(resp.headers["vary"], "Accept-Encoding");
        assert!(resp.headers.get("content-encoding").is_none());
    }
}
