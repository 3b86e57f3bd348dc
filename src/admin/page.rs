//! `GET /` on the admin listener: a status page for people, plain HTML, CSS and a little
//! JavaScript compiled into the binary (no external assets, so it works on an isolated admin
//! network). It reads `/status` every `REFRESH` and draws routes with their last minute of
//! traffic, and upstreams with each target's health, circuit and pool.

pub const STATUS_PAGE: &str = include_str!("status.html");

/// The page runs only its own inline script and style, and talks only to this listener.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; frame-ancestors 'none'";
