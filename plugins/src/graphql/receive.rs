//! Reading a GraphQL request off the client's connection, as GraphQL over HTTP has it: a GET's
//! query string, or a POST's whole body (bounded), and any other method refused. One reading
//! for the `graphql_guard` plugin and the schemas Portico serves.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use http::{Method, StatusCode};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::{code, request, GraphqlRequest, Refusal};
use crate::ErrorCode;

/// How reading the request ended.
pub enum Received {
    Request(GraphqlRequest),
    /// Not a GraphQL request (a bad body, one too large): answered as a GraphQL error.
    Refused(Refusal),
    /// A method GraphQL over HTTP does not have: 405, with this `Allow`.
    MethodNotAllowed(Refusal, &'static str),
    /// The client failed while sending its body: a problem with this code (400, or 408 when
    /// it was too slow), and the connection closes.
    BodyFailed(ErrorCode),
}

/// Read the request. A POST body of more than `max_body` bytes is refused (by its declared
/// length before anything is read). `replay`: keep what is read in the session's retry
/// buffer, so the driver that forwards the request sends these same bytes upstream (the
/// guard); a served schema forwards nothing. A client that sent `Expect: 100-continue` is
/// told to go on first, since nobody upstream is asked before the body is read.
pub async fn receive(
    session: &mut Session,
    max_body: usize,
    max_query_size: usize,
    replay: bool,
) -> pingora_error::Result<Received> {
    let req = session.req_header();
    if req.method == Method::GET {
        return Ok(match request::from_get(req.uri.query().unwrap_or("")) {
            Ok(graphql) => Received::Request(graphql),
            Err(refusal) => Received::Refused(refusal),
        });
    }
    if req.method != Method::POST {
        let refusal = Refusal::new(
            code::BAD_REQUEST,
            format!("GraphQL requests are GET or POST, not {}", req.method),
        );
        return Ok(Received::MethodNotAllowed(refusal, "GET, POST"));
    }
    let body = match read_body(session, max_body, max_query_size, replay).await? {
        Ok(body) => body,
        Err(received) => return Ok(received),
    };
    let content_type = session
        .req_header()
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    Ok(match request::from_post(content_type, &body) {
        Ok(graphql) => Received::Request(graphql),
        Err(refusal) => Received::Refused(refusal),
    })
}

async fn read_body(
    session: &mut Session,
    max_body: usize,
    max_query_size: usize,
    replay: bool,
) -> pingora_error::Result<Result<Bytes, Received>> {
    let too_large = |session: &mut Session| {
        // What is left of the body is not read: the connection cannot carry another request.
        session.set_keepalive(None);
        Received::Refused(Refusal::new(
            code::QUERY_TOO_LARGE,
            format!(
                "the request body is over {max_body} bytes (room for max_query_size {max_query_size} and the JSON around it)"
            ),
        ))
    };
    let declared = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Ok(Err(too_large(session)));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        let go_on = ResponseHeader::build(StatusCode::CONTINUE, Some(0))?;
        if session
            .downstream_session
            .write_response_header(Box::new(go_on))
            .await
            .is_err()
        {
            session.set_keepalive(None);
            return Ok(Err(Received::BodyFailed(ErrorCode::BadRequest)));
        }
    }
    if replay {
        session.enable_retry_buffering();
    }
    let mut body = BytesMut::with_capacity(declared.map_or(1024, |n| n as usize));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max_body {
                    return Ok(Err(too_large(session)));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Ok(body.freeze())),
            Err(e) => {
                log::debug!("graphql: reading a request body: {e}");
                // What is left of the body cannot be found: nor can the next request.
                session.set_keepalive(None);
                let code = if e.etype == pingora_error::ErrorType::ReadTimedout {
                    ErrorCode::RequestTimeout
                } else {
                    ErrorCode::BadRequest
                };
                return Ok(Err(Received::BodyFailed(code)));
            }
        }
    }
}
