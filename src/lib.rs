//! Portico: an API gateway and edge proxy on Pingora.

pub mod config;
pub mod router;
