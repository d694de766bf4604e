//! Tokens kept in the credentials file as salted SHA-256 digests (`sha256:SALT:DIGEST`, hex):
//! a copy of the file then grants nothing. Tokens are random and long (`vpcep credentials
//! new-token` makes 256-bit ones), so one salted hash is enough; a slow hash (argon2) would
//! only add its cost to every request. The SK of an AK/SK pair cannot be stored this way: the
//! server needs it to check signatures.
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix that marks a stored token as hashed.
pub const PREFIX: &str = "sha256:";

const SALT_LEN: usize = 16;

/// A stored token's salt and digest.
#[derive(Debug, Clone)]
pub struct HashedToken {
    salt: Vec<u8>,
    digest: [u8; 32],
}

impl HashedToken {
    /// `None` for a token in clear; for the hashed form, the parsed hash or why it is not one.
    pub fn parse(stored: &str) -> Option<Result<Self, &'static str>> {
        let rest = stored.strip_prefix(PREFIX)?;
        Some(Self::parse_hashed(rest))
    }

    fn parse_hashed(rest: &str) -> Result<Self, &'static str> {
        let (salt, digest) = rest
            .split_once(':')
            .ok_or("a hashed token is sha256:SALT:DIGEST")?;
        let salt = hex::decode(salt).map_err(|_| "the salt of a hashed token is not hex")?;
        if salt.len() < 8 {
            return Err("the salt of a hashed token has fewer than 8 bytes");
        }
        let digest = hex::decode(digest)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or("the digest of a hashed token is not 64 hex digits")?;
        Ok(Self { salt, digest })
    }

    /// Whether `token` is the one hashed, in time independent of where they differ.
    pub fn matches(&self, token: &str) -> bool {
        digest(&self.salt, token).ct_eq(&self.digest).into()
    }
}

fn digest(salt: &[u8], token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// The stored form of `token`, with a fresh random salt.
pub fn hash(token: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    format!(
        "{PREFIX}{}:{}",
        hex::encode(salt),
        hex::encode(digest(&salt, token))
    )
}

/// A new random token: 32 bytes, hex.
pub fn new_token() -> String {
    let mut t = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut t);
    hex::encode(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_matches_its_token_only() {
        let stored = hash("s3cret-token");
        assert!(!stored.contains("s3cret"));
        let h = HashedToken::parse(&stored).unwrap().unwrap();
        assert!(h.matches("s3cret-token"));
        assert!(!h.matches("s3cret-tokem"));
        assert!(!h.matches(""));
        // Fresh salt: the same token hashes differently each time.
        assert_ne!(stored, hash("s3cret-token"));
    }

    #[test]
    fn clear_and_malformed_forms() {
        assert!(HashedToken::parse("plain-token").is_none());
        for bad in [
            "sha256:",
            "sha256:zz:00",
            "sha256:0011:00",
            "sha256:0011223344556677:abcd",
        ] {
            assert!(
                matches!(HashedToken::parse(bad), Some(Err(_))),
                "{bad} accepted"
            );
        }
    }
}
