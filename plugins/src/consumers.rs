//! Known callers (`[consumers.NAME]`): their names, tiers and API keys. Keys are kept only as
//! SHA-256 digests and matched by digest, then compared in constant time, so neither the
//! stored keys nor the time a lookup takes reveal a key.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug)]
pub struct Consumer {
    pub name: Arc<str>,
    pub tier: Option<Arc<str>>,
}

#[derive(Debug, Default)]
pub struct Consumers {
    by_name: HashMap<String, Arc<Consumer>>,
    by_key: HashMap<[u8; 32], Arc<Consumer>>,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl Consumers {
    /// Add a consumer; returns the name of another consumer that already holds one of its
    /// keys, if any (the caller reports that as a config error).
    pub fn insert(&mut self, name: &str, tier: Option<&str>, keys: &[String]) -> Option<String> {
        let consumer = Arc::new(Consumer {
            name: name.into(),
            tier: tier.map(Into::into),
        });
        self.by_name.insert(name.to_string(), Arc::clone(&consumer));
        for key in keys {
            if let Some(previous) = self
                .by_key
                .insert(digest(key.as_bytes()), Arc::clone(&consumer))
            {
                if previous.name.as_ref() != name {
                    return Some(previous.name.to_string());
                }
            }
        }
        None
    }

    /// The consumer an API key belongs to.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        let presented = digest(key);
        let (stored, consumer) = self.by_key.get_key_value(&presented)?;
        bool::from(stored.ct_eq(&presented)).then_some(consumer)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_find_their_consumer_and_nothing_else() {
        let mut c = Consumers::default();
        assert_eq!(
            c.insert("acme", Some("premium"), &["acme-key-1234".into()]),
            None
        );
        assert_eq!(c.insert("globex", None, &["globex-key-5678".into()]), None);
        assert_eq!(
            c.by_api_key(b"acme-key-1234").unwrap().name.as_ref(),
            "acme"
        );
        assert_eq!(
            c.by_api_key(b"acme-key-1234").unwrap().tier.as_deref(),
            Some("premium")
        );
        assert!(c.by_api_key(b"acme-key-123").is_none());
        assert!(c.by_api_key(b"").is_none());
        assert_eq!(
            c.insert("copycat", None, &["acme-key-1234".into()])
                .as_deref(),
            Some("acme")
        );
    }
}
