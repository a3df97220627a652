//! Password hashes for the optional PLAIN/AMQPLAIN bridge: argon2id (PHC string format), so the
//! definitions file never holds a password, only a salted, memory-hard hash.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub(crate) struct HashError(String);

/// Hashes `password` with argon2id and a fresh random salt.
pub(crate) fn hash(password: &str) -> Result<String, HashError> {
    if password.is_empty() {
        return Err(HashError("the password is empty".into()));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the stored `hash` (false for a malformed hash).
pub fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify_only_the_right_password() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify(&h, "s3cret"));
        assert!(!verify(&h, "s3cret "));
        assert!(!verify("not a hash", "s3cret"));
        assert_ne!(h, hash("s3cret").unwrap(), "salted");
        assert!(hash("").is_err());
    }
}
