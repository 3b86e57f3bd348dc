//! Where verification keys come from (a shared secret, a PEM public key, or a JWKS) and how
//! the key for one token is chosen. The token's header may name a key (`kid`) but never an
//! algorithm outside the pinned list, and never a location: `jku`, `x5u` and embedded `jwk`
//! are ignored, and a path-like `kid` is refused outright.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::jwks::Jwks;

/// One usable key: the decoding key, and the algorithm the JWKS bound it to, if any.
pub struct VerifyKey {
    pub key: DecodingKey,
    pub alg: Option<Algorithm>,
}

/// Keys by `kid`. A key without a `kid` is stored under the empty string.
#[derive(Default)]
pub struct KeyMap {
    pub keys: HashMap<String, Arc<VerifyKey>>,
}

pub enum KeySource {
    /// A secret or one PEM key: `kid` is not consulted.
    Static(Arc<VerifyKey>),
    Jwks(Arc<Jwks>),
}

/// Whether a `kid` is something we would ever look up. Anything path-like, overlong or with
/// control characters is refused before any lookup or refresh.
pub fn sane_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 256
        && !kid.contains(['/', '\\'])
        && !kid.contains("..")
        && !kid.chars().any(char::is_control)
}

/// Read a PEM public key for the pinned algorithm family.
pub fn pem_key(pem: &[u8], alg: Algorithm) -> Result<DecodingKey, String> {
    use Algorithm::*;
    let key = match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(pem),
        ES256 | ES384 => DecodingKey::from_ec_pem(pem),
        EdDSA => DecodingKey::from_ed_pem(pem),
        HS256 | HS384 | HS512 => {
            return Err("HS* algorithms take `secret`, not `public_key`".into())
        }
        other => return Err(format!("{other:?} is not supported")),
    };
    key.map_err(|e| format!("not a valid PEM public key for {alg:?}: {e}"))
}

fn jwk_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    Some(match alg {
        K::HS256 => Algorithm::HS256,
        K::HS384 => Algorithm::HS384,
        K::HS512 => Algorithm::HS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The usable signing keys of a JWKS document. Keys for encryption, with an unknown `alg`,
/// or that cannot be decoded are skipped (and counted in the log by the caller).
pub fn parse_jwks(body: &[u8]) -> Result<(KeyMap, usize), String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut map = KeyMap::default();
    let mut skipped = 0;
    for jwk in &set.keys {
        match usable_key(jwk) {
            Some(key) => {
                let kid = jwk.common.key_id.clone().unwrap_or_default();
                map.keys.insert(kid, Arc::new(key));
            }
            None => skipped += 1,
        }
    }
    Ok((map, skipped))
}

fn usable_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(jwk_algorithm(a)?),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { key, alg })
}

impl KeyMap {
    /// The key for a token's `kid`; a token without `kid` may use the only key there is.
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.keys.get(kid),
            None if self.keys.len() == 1 => self.keys.values().next(),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_like_and_odd_kids_are_refused() {
        assert!(sane_kid("2024-09-key-1"));
        for kid in [
            "",
            "../../etc/passwd",
            "/dev/null",
            "a\\b",
            "x\ny",
            &"k".repeat(300),
        ] {
            assert!(!sane_kid(kid), "{kid:?}");
        }
    }

    #[test]
    fn a_jwks_keeps_signing_keys_and_skips_the_rest() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"h1","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
            {"kty":"oct","kid":"enc","use":"enc","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"broken","n":"!!","e":"AQAB"}
        ]}"#;
        let (map, skipped) = parse_jwks(doc).unwrap();
        assert_eq!(map.keys.len(), 1);
        assert_eq!(skipped, 2);
        assert_eq!(map.find(Some("h1")).unwrap().alg, Some(Algorithm::HS256));
        assert!(map.find(Some("enc")).is_none());
        assert!(
            map.find(None).is_some(),
            "the only key serves tokens without kid"
        );
        assert!(parse_jwks(b"not json").is_err());
    }
}
