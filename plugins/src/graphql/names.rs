//! Operation names as metric labels. A name comes from the client, so a label set that took
//! every name would grow without bound: a route keeps the first [`MAX_OPERATION_NAMES`]
//! names it sees, and every later new name is labelled `""`.
//!
//! Reads are the hot path (every request looks its name up) and lock-free: the set is an
//! `ArcSwap`, and a new name copies it under a mutex that only writers take. At most
//! `MAX_OPERATION_NAMES` copies are ever made, each of at most that many names.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

/// How many distinct operation names one set labels.
pub const MAX_OPERATION_NAMES: usize = 100;

#[derive(Debug)]
pub struct OperationNames {
    names: ArcSwap<HashSet<Arc<str>>>,
    /// Serializes writers, so two new names at once both land.
    writer: Mutex<()>,
    max: usize,
    unnamed: Arc<str>,
}

impl Default for OperationNames {
    fn default() -> Self {
        OperationNames::new(MAX_OPERATION_NAMES)
    }
}

impl OperationNames {
    pub fn new(max: usize) -> OperationNames {
        OperationNames {
            names: ArcSwap::from_pointee(HashSet::new()),
            writer: Mutex::new(()),
            max,
            unnamed: Arc::from(""),
        }
    }

    /// The label for `name`: the name itself while the set has room for it, else `""`.
    pub fn label(&self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.load().get(name) {
            return Arc::clone(known);
        }
        if name.is_empty() {
            return Arc::clone(&self.unnamed);
        }
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.names.load_full();
        if let Some(known) = current.get(name) {
            return Arc::clone(known);
        }
        if current.len() >= self.max {
            return Arc::clone(&self.unnamed);
        }
        let name: Arc<str> = Arc::from(name);
        let mut next = HashSet::clone(&current);
        next.insert(Arc::clone(&name));
        self.names.store(Arc::new(next));
        name
    }

    /// The label `name` already has, or `""`: never adds it.
    pub fn known(&self, name: &str) -> Arc<str> {
        self.names
            .load()
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::clone(&self.unnamed))
    }

    /// The label for an operation without a name.
    pub fn unnamed(&self) -> Arc<str> {
        Arc::clone(&self.unnamed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_bound_are_unnamed() {
        let names = OperationNames::new(3);
        for name in ["A", "B", "C", "A"] {
            assert_eq!(&*names.label(name), name);
        }
        assert_eq!(&*names.label("D"), "");
        assert_eq!(&*names.known("D"), "");
        assert_eq!(&*names.known("A"), "A");
        assert_eq!(&*names.label("B"), "B", "known names keep their label");
        assert_eq!(&*names.label(""), "");
        assert_eq!(&*names.unnamed(), "");
    }

    #[test]
    fn the_default_bound_is_a_hundred() {
        let names = OperationNames::default();
        for i in 0..150 {
            let label = names.label(&format!("Op{i}"));
            assert_eq!(label.is_empty(), i >= MAX_OPERATION_NAMES, "{i}");
        }
    }

    #[test]
    fn names_from_many_threads_all_land_within_the_bound() {
        let names = Arc::new(OperationNames::new(64));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let names = Arc::clone(&names);
                std::thread::spawn(move || {
                    for i in 0..8 {
                        assert_eq!(&*names.label(&format!("T{t}N{i}")), format!("T{t}N{i}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(names.names.load().len(), 64);
        assert_eq!(&*names.label("one-more"), "");
    }
}
