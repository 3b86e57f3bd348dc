//! Query texts seen before, parsed and validated once.
//!
//! Clients send the same few queries over and over (a screen's query, with new variables).
//! Parsing one (async-graphql's pest parser) and validating it against the schema cost more
//! than a third of the GraphQL layer's own CPU per request in the dashboard benchmark
//! (loadtest/RESULTS.md), and give the same answer each time for the same text. So a text
//! whose query passed async-graphql's full validation is kept, parsed: the next request with
//! that text clones the document instead of parsing it, has its operation measured again
//! (its variables may make lists longer), and runs on the schema built with async-graphql's
//! fast validation, which only checks what execution needs.
//!
//! Bounded: at most `MAX` texts per schema (a reload starts afresh); past that, new texts
//! are parsed and validated each time, as without the cache. Reads take no lock (a shared
//! map swapped whole); the rare insert copies the map under a writers' mutex.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use async_graphql::parser::types::ExecutableDocument;

/// Distinct query texts kept per schema.
pub const MAX: usize = 256;

#[derive(Default)]
pub struct Documents {
    known: ArcSwap<HashMap<Arc<str>, Arc<ExecutableDocument>>>,
    writer: Mutex<()>,
}

impl Documents {
    /// The document of `query`, if it passed full validation before.
    pub fn get(&self, query: &str) -> Option<Arc<ExecutableDocument>> {
        self.known.load().get(query).cloned()
    }

    /// Keep `document`, the parse of `query`, which just passed full validation.
    pub fn insert(&self, query: &str, document: ExecutableDocument) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let known = self.known.load();
        if known.len() >= MAX || known.contains_key(query) {
            return;
        }
        let mut more = HashMap::clone(&known);
        more.insert(Arc::from(query), Arc::new(document));
        self.known.store(Arc::new(more));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_kept_up_to_the_bound() {
        let documents = Documents::default();
        let doc = async_graphql::parser::parse_query("{ a }").unwrap();
        assert!(documents.get("{ a }").is_none());
        documents.insert("{ a }", doc.clone());
        assert!(documents.get("{ a }").is_some());
        for i in 0..MAX + 10 {
            documents.insert(&format!("{{ a{i} }}"), doc.clone());
        }
        assert_eq!(documents.known.load().len(), MAX);
        assert!(documents.get(&format!("{{ a{} }}", MAX + 5)).is_none());
    }
}
