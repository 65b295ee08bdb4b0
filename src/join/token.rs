//! Join tokens: `RIFT1<sha256 of the CA>::<id>.<secret>` (the k3s form). Pure.
//!
//! The hash pins the cluster CA: a joining node checks the CA a controller serves against it
//! before it sends anything secret. The id names the token's record in etcd; the secret is
//! 32 random lowercase hex digits (128 bits) of which etcd keeps only an HMAC-SHA256 under the
//! cluster's token key, so reading etcd (or a backup of it) does not give a usable token.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every token starts with (the format's version).
pub const PREFIX: &str = "RIFT1";
/// Hex digits of the CA hash.
pub const HASH_LEN: usize = 64;
/// Characters of the id (`[a-z0-9]`).
pub const ID_LEN: usize = 6;
/// Hex digits of the secret.
pub const SECRET_LEN: usize = 32;

/// A parsed token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The CA's SHA-256, lowercase hex.
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for Token {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}::{}.{}", self.ca_hash, self.id, self.secret)
    }
}

/// Why a token does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the token does not start with {PREFIX}: copy the whole line `rift token create` printed"
    )]
    Prefix,
    #[error("the token is cut short ({0}): copy the whole line `rift token create` printed, RIFT1<64 hex digits>::<6 characters>.<32 hex digits>")]
    Truncated(&'static str),
    #[error("the token's CA hash is not 64 hexadecimal digits")]
    Hash,
    #[error("the token's id is not 6 lowercase letters or digits")]
    Id,
    #[error("the token's secret is not 32 lowercase hexadecimal digits")]
    Secret,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system gives randomness");
    b
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Token {
    /// A new token for the CA with hash `ca_hash`.
    pub fn generate(ca_hash: &str) -> Token {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let id = random_bytes::<ID_LEN>()
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        Token {
            ca_hash: ca_hash.to_lowercase(),
            id,
            secret: hex::encode(random_bytes::<{ SECRET_LEN / 2 }>()),
        }
    }

    /// Parses `RIFT1<hash>::<id>.<secret>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or(if PREFIX.starts_with(text) {
                TokenError::Truncated("nothing after RIFT1")
            } else {
                TokenError::Prefix
            })?;
        let (hash, credential) = rest
            .split_once("::")
            .ok_or(TokenError::Truncated("no `::` after the CA hash"))?;
        if hash.len() < HASH_LEN && is_hex(hash) {
            return Err(TokenError::Truncated("the CA hash is short"));
        }
        if hash.len() != HASH_LEN || !is_hex(&hash.to_lowercase()) {
            return Err(TokenError::Hash);
        }
        let (id, secret) = credential
            .split_once('.')
            .ok_or(TokenError::Truncated("no `.` between id and secret"))?;
        if id.len() != ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(TokenError::Id);
        }
        if secret.len() < SECRET_LEN && is_hex(secret) {
            return Err(TokenError::Truncated("the secret is short"));
        }
        if secret.len() != SECRET_LEN || !is_hex(secret) {
            return Err(TokenError::Secret);
        }
        Ok(Token {
            ca_hash: hash.to_lowercase(),
            id: id.into(),
            secret: secret.into(),
        })
    }

    /// `<id>.<secret>`: what a joining node sends once it trusts the CA.
    pub fn credential(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// Splits a credential `<id>.<secret>` (as sent by a joining node).
pub fn split_credential(credential: &str) -> Option<(&str, &str)> {
    let (id, secret) = credential.split_once('.')?;
    (id.len() == ID_LEN && secret.len() == SECRET_LEN).then_some((id, secret))
}

fn mac(key: &[u8], id: &str, secret: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"rift join token\0");
    m.update(id.as_bytes());
    m.update(b"\0");
    m.update(secret.as_bytes());
    m
}

/// The HMAC stored for a token (hex).
pub fn digest(key: &[u8], id: &str, secret: &str) -> String {
    hex::encode(mac(key, id, secret).finalize().into_bytes())
}

/// Whether `secret` matches the stored `digest_hex` (constant time).
pub fn verify(key: &[u8], id: &str, secret: &str, digest_hex: &str) -> bool {
    let Ok(expected) = hex::decode(digest_hex) else {
        return false;
    };
    mac(key, id, secret).verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_round_trips_and_hides_its_secret() {
        let t = Token::generate(&"ab".repeat(32));
        let text = t.to_string();
        assert!(text.starts_with("RIFT1abab"));
        assert_eq!(Token::parse(&format!("  {text}\n")).unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(
            split_credential(&t.credential()),
            Some((&*t.id, &*t.secret))
        );
    }

    #[test]
    fn truncated_and_malformed_tokens_say_what_is_wrong() {
        let t = Token::generate(&"0f".repeat(32)).to_string();
        for cut in [3, 40, 70, 72, 80, t.len() - 1] {
            let err = Token::parse(&t[..cut]).unwrap_err();
            assert!(matches!(err, TokenError::Truncated(_)), "{cut}: {err:?}");
            assert!(err.to_string().contains("whole line"), "{err}");
        }
        assert_eq!(Token::parse("K10abc::x.y"), Err(TokenError::Prefix));
        let bad_id = t.replacen("::", "::A", 1);
        assert!(Token::parse(&bad_id).is_err());
        assert_eq!(Token::parse(&format!("{t}0")), Err(TokenError::Secret));
    }

    #[test]
    fn only_the_right_secret_matches_the_stored_digest() {
        let key = b"k".repeat(32);
        let d = digest(&key, "abc123", &"1".repeat(32));
        assert!(verify(&key, "abc123", &"1".repeat(32), &d));
        assert!(!verify(&key, "abc123", &"2".repeat(32), &d));
        assert!(!verify(&key, "abc124", &"1".repeat(32), &d));
        assert!(!verify(b"other", "abc123", &"1".repeat(32), &d));
        assert!(!verify(&key, "abc123", &"1".repeat(32), "zz"));
    }
}
