//! `admin.token`: when set, every admin endpoint but `/healthz` and `/readyz` needs it, as
//! `Authorization: Bearer TOKEN` (scrapers, scripts) or as HTTP Basic with the token as the
//! password, any user name (so a browser can open the status page).
//!
//! Only the token's SHA-256 digest is kept, and a presented token is digested and compared in
//! constant time: neither the kept value nor the time a check takes tells an attacker how much
//! of a guess was right, whatever the guess's length.

use base64::Engine;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether an `Authorization` header carries the token.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        authorization
            .and_then(presented)
            .is_some_and(|token| self.matches(&token))
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.0.ct_eq(&digest))
    }
}

/// The token in `Bearer TOKEN` or in `Basic base64(user:TOKEN)`; schemes are case-insensitive
/// (RFC 9110, section 11.1).
fn presented(value: &HeaderValue) -> Option<Vec<u8>> {
    let value = value.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let credentials = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        Some(credentials.to_vec())
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some(decoded[colon + 1..].to_vec())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn bearer_and_basic_carry_the_token_and_nothing_else_does() {
        let token = AdminToken::new("s3cret");
        assert!(token.admits(Some(&header("Bearer s3cret"))));
        assert!(token.admits(Some(&header("bearer s3cret"))));
        // "ops:s3cret" and ":s3cret": the user name is not checked.
        assert!(token.admits(Some(&header("Basic b3BzOnMzY3JldA=="))));
        assert!(token.admits(Some(&header("Basic OnMzY3JldA=="))));
        assert!(!token.admits(None));
        assert!(!token.admits(Some(&header("Bearer s3cre"))));
        assert!(!token.admits(Some(&header("Bearer s3cret2"))));
        assert!(!token.admits(Some(&header("s3cret"))));
        assert!(!token.admits(Some(&header("Token s3cret"))));
        // "s3cret" alone, with no user part: not HTTP Basic.
        assert!(!token.admits(Some(&header("Basic czNjcmV0"))));
        assert!(!token.admits(Some(&header("Basic not base64!"))));
    }
}
