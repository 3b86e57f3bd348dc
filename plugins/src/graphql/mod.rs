//! GraphQL at the edge: the pieces both the `graphql_guard` plugin (in front of a GraphQL
//! upstream) and the schema Portico serves itself use to read a GraphQL-over-HTTP request,
//! hold it to limits, match it against persisted queries, and answer in GraphQL's own format.
//!
//! Parsing is `async-graphql-parser`'s; nothing here executes anything.

pub mod answer;
pub mod limits;
pub mod names;
pub mod persisted;
pub mod receive;
mod refusal;
pub mod request;

pub use answer::{errors_body, refusal_status, MediaType};
pub use limits::{check, check_document, check_named, Checked, FieldShape, Limits, Shape};
pub use names::OperationNames;
pub use persisted::{query_of, resolve_without_list, PersistedError, PersistedQueries};
pub use receive::{receive, Received};
pub use refusal::{code, Refusal};
pub use request::{from_get, from_post, GraphqlRequest};
