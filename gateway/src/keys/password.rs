//! MQTT password hashes (Argon2id, PHC strings), and the two costs we hash at.
//!
//! A device's password is derived from its 256-bit master secret
//! (`schemas::security::mqtt_password`): it cannot be guessed, so the hash
//! does not need to be slow, only one-way; Argon2id at the lowest cost keeps
//! registering a million devices to minutes and a reconnection storm cheap.
//! The dashboard backend's password is chosen by a person: it gets OWASP's
//! recommended cost.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

/// Argon2id for high-entropy device passwords: 1 MiB, one pass.
pub const DEVICE_COST: (u32, u32) = (1024, 1);
/// Argon2id for a person's password: 19 MiB, two passes (OWASP Password
/// Storage Cheat Sheet, 2024).
pub const OPERATOR_COST: (u32, u32) = (19 * 1024, 2);

/// Bytes of random salt per hash (RFC 9106 §3.1 recommends 16).
const SALT_LEN: usize = 16;

/// A PHC string (`$argon2id$v=19$m=..,t=..,p=1$salt$hash`) of `password` at
/// `cost` = (memory KiB, passes).
pub fn hash(password: &str, cost: (u32, u32)) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    // Infallible: the costs are constants within Argon2's bounds.
    let params = Params::new(cost.0, cost.1, 1, None).expect("valid Argon2 cost");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("a 16-byte salt and in-bounds costs hash")
        .to_string()
}

/// Whether `password` matches the PHC string `phc` (at the cost it records).
/// A malformed `phc` matches nothing.
pub fn verify(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// Whether `phc` is an Argon2id PHC string this module can verify against.
pub fn is_argon2id_phc(phc: &str) -> bool {
    argon2::password_hash::phc::PasswordHash::new(phc)
        .is_ok_and(|h| h.algorithm == argon2::Algorithm::Argon2id.ident())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_records_its_cost() {
        let h = hash("correct horse", DEVICE_COST);
        assert!(h.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{h}");
        assert!(verify("correct horse", &h));
        assert!(!verify("correct horsf", &h));
        assert!(!verify("correct horse", "not a phc string"));
        assert_ne!(hash("correct horse", DEVICE_COST), h, "salted");
        assert!(hash("x", OPERATOR_COST).contains("m=19456,t=2"));
        assert!(is_argon2id_phc(&h));
        assert!(!is_argon2id_phc("hunter2"));
    }
}
