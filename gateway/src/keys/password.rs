//! MQTT password hashes (Argon2id, PHC strings), and the two costs we hash at.
//!
//! A device's password is derived from its 256-bit master secret
//! (`schemas::security::mqtt_password`): it cannot be guessed, so the hash
//! does not need to be slow, only one-way; Argon2id at the lowest cost keeps
//! registering a million devices to minutes and a reconnection storm cheap.
//! The dashboard backend's password is chosen by a person: it gets OWASP's
//! recommended cost.

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
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

/// A stored password hash as the key ring holds it. A device's hash is a
/// 96-character Argon2id PHC string: as text, a 112-byte heap block and a
/// pointer for each of a million devices; as its parts, 56 bytes inline
/// (passes and lanes are small numbers: a cost past 255 stays text).
/// Any string that is not of that shape (another algorithm, salt or output
/// length) is kept as text. Either way [`StoredHash::to_phc`] gives back
/// exactly the stored string: a hash is only held in parts when its parts
/// write it again character for character.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredHash {
    Argon2id {
        memory_kib: u32,
        passes: u8,
        lanes: u8,
        salt: [u8; SALT_LEN],
        output: [u8; OUTPUT_LEN],
    },
    Phc(Box<str>),
}

/// Bytes of Argon2 output `hash` writes (argon2's default).
const OUTPUT_LEN: usize = 32;

impl StoredHash {
    pub fn new(phc: &str) -> StoredHash {
        Self::in_parts(phc)
            .filter(|parts| parts.to_phc() == phc)
            .unwrap_or_else(|| StoredHash::Phc(phc.into()))
    }

    fn in_parts(phc: &str) -> Option<StoredHash> {
        let h = PasswordHash::new(phc).ok()?;
        if h.algorithm != Algorithm::Argon2id.ident()
            || h.version != Some(Version::V0x13.into())
            || h.params.iter().count() != 3
        {
            return None;
        }
        Some(StoredHash::Argon2id {
            memory_kib: h.params.get_decimal("m")?,
            passes: h.params.get_decimal("t")?.try_into().ok()?,
            lanes: h.params.get_decimal("p")?.try_into().ok()?,
            salt: h.salt?.as_ref().try_into().ok()?,
            output: h.hash?.as_bytes().try_into().ok()?,
        })
    }

    /// The PHC string, as stored.
    pub fn to_phc(&self) -> String {
        match self {
            StoredHash::Phc(phc) => phc.to_string(),
            StoredHash::Argon2id {
                memory_kib,
                passes,
                lanes,
                salt,
                output,
            } => {
                let mut params = ParamsString::new();
                // Infallible: three short names and numbers fit the buffer.
                let (passes, lanes) = (u32::from(*passes), u32::from(*lanes));
                for (name, value) in [("m", *memory_kib), ("t", passes), ("p", lanes)] {
                    params
                        .add_decimal(name, value)
                        .expect("three Argon2 parameters fit a PHC parameter string");
                }
                PasswordHash {
                    algorithm: Algorithm::Argon2id.ident(),
                    version: Some(Version::V0x13.into()),
                    params,
                    salt: Salt::new(salt).ok(),
                    hash: Output::new(output).ok(),
                }
                .to_string()
            }
        }
    }
}

impl std::fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredHash::Argon2id { .. } => f.write_str("StoredHash::Argon2id(..)"),
            StoredHash::Phc(_) => f.write_str("StoredHash::Phc(..)"),
        }
    }
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

    #[test]
    fn a_stored_hash_gives_back_the_exact_string_in_parts_or_as_text() {
        for cost in [DEVICE_COST, OPERATOR_COST] {
            let phc = hash("correct horse", cost);
            let held = StoredHash::new(&phc);
            assert!(matches!(held, StoredHash::Argon2id { .. }), "{phc}");
            assert_eq!(held.to_phc(), phc);
            assert!(verify("correct horse", &held.to_phc()));
        }
        // Not of the device shape: kept as text, given back unchanged.
        let argon2i = "$argon2i$v=19$m=1024,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
        let short_salt =
            "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
        let keyed = "$argon2id$v=19$m=1024,t=1,p=1,keyid=AAAA$c29tZXNhbHRzb21lc2FsdA$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
        let many_passes = "$argon2id$v=19$m=1024,t=300,p=1$c29tZXNhbHRzb21lc2FsdA$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
        // Of the device shape, but its parts would write it another way
        // (parameters in another order): only the exact-string check keeps
        // it as text.
        let reordered = "$argon2id$v=19$t=1,m=1024,p=1$c29tZXNhbHRzb21lc2FsdA$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
        assert!(StoredHash::in_parts(reordered).is_some());
        for phc in [
            argon2i,
            short_salt,
            keyed,
            many_passes,
            reordered,
            "not a phc string",
        ] {
            let held = StoredHash::new(phc);
            assert!(matches!(held, StoredHash::Phc(_)), "{phc}");
            assert_eq!(held.to_phc(), phc);
        }
        assert!(std::mem::size_of::<StoredHash>() <= 56);
        assert_eq!(
            format!("{:?}", StoredHash::new(argon2i)),
            "StoredHash::Phc(..)"
        );
    }
}
