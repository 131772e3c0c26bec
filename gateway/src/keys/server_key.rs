//! The server key (key-encryption key): 32 bytes from the configuration or
//! the environment, never stored in the database. Every device's master
//! secret is stored wrapped under it with AES-256-GCM (envelope encryption),
//! the wrap bound to the device and the key's generation by its associated
//! data, so a wrapped secret copied to another device's row does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use dispatcher::keys::{DeviceRef, MasterSecret, MASTER_SECRET_LEN};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Bytes of the server key: AES-256.
pub const SERVER_KEY_LEN: usize = 32;

/// Bytes of an AES-GCM nonce; random per wrap (2^32 wraps under one key
/// keep the collision chance below 2^-32, NIST SP 800-38D §8.3). Being
/// random and stored with the wrap, it also tells one stored key of a
/// device from another (see `store::KeyStamp`).
pub const WRAP_NONCE_LEN: usize = 12;

/// Hex characters of a server key's id: the first 8 bytes of its SHA-256.
/// Stored with each wrapped secret to say which key it needs.
const KEY_ID_HEX: usize = 16;

/// Why the server key could not be had, or a wrapped secret not opened.
#[derive(Debug, thiserror::Error)]
pub enum ServerKeyError {
    #[error("the server key must be {} hex characters ({SERVER_KEY_LEN} random bytes), got {found} characters; make one with `gateway keys new-server-key`", SERVER_KEY_LEN * 2)]
    Length { found: usize },
    #[error("the server key must be hex (0-9, a-f); make one with `gateway keys new-server-key`")]
    NotHex,
    #[error("cannot read the server key file {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("cannot write the new server key file {path}: {detail}")]
    Write { path: PathBuf, detail: String },
    #[error("the {device}'s key was wrapped under server key {stored}, but the server key in use is {current}: start with the server key it was registered under")]
    WrongServerKey {
        device: String,
        stored: String,
        current: String,
    },
    #[error("the {device}'s stored key does not open under this server key (tampered, or bound to another device): re-register or rotate it")]
    Unwrap { device: String },
}

/// The server key. `Debug` shows only its id.
#[derive(Clone)]
pub struct ServerKey {
    cipher: Aes256Gcm,
    id: String,
    /// HKDF-SHA-256 of the key for 2FA (passcode salts, OTP tags), so the
    /// wrapping key itself is used for nothing else.
    twofa: std::sync::Arc<Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerKey({})", self.id)
    }
}

/// A master secret wrapped under the server key, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrapped {
    pub kek_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl ServerKey {
    /// From 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<ServerKey, ServerKeyError> {
        let text = text.trim();
        if text.len() != SERVER_KEY_LEN * 2 {
            return Err(ServerKeyError::Length { found: text.len() });
        }
        let mut key = Zeroizing::new([0u8; SERVER_KEY_LEN]);
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(ServerKeyError::NotHex);
            key[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(ServerKey::from_bytes(&key))
    }

    fn from_bytes(key: &[u8; SERVER_KEY_LEN]) -> ServerKey {
        let digest = Sha256::digest(key);
        let id = digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..KEY_ID_HEX]
            .to_string();
        // Infallible: the slice is exactly the AES-256 key length.
        let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
        let mut twofa = Zeroizing::new([0u8; 32]);
        // Infallible: 32 bytes is far below HKDF-SHA-256's 8160-byte limit.
        hkdf::Hkdf::<Sha256>::new(None, key)
            .expand(b"lockfleet 2fa v1", &mut *twofa)
            .expect("32-byte HKDF output");
        ServerKey {
            cipher,
            id,
            twofa: std::sync::Arc::new(twofa),
        }
    }

    fn twofa_mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        // Infallible: HMAC takes a key of any length.
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.twofa[..]).expect("any key length");
        mac.update(label);
        for p in parts {
            // Length-prefixed, so ("ab","c") and ("a","bc") differ.
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// The Argon2id salt of an organisation's 2FA passcodes: fixed per
    /// organisation (a passcode is looked up by its hash, since the lock
    /// sends only the digits) and secret (derived from the server key), so
    /// the stored hashes cannot be attacked without the server key.
    pub fn passcode_salt(&self, org: &str) -> [u8; 16] {
        let full = self.twofa_mac(b"passcode salt", &[org.as_bytes()]);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&full[..16]);
        salt
    }

    /// The keyed hash an OTP is kept as, bound to its challenge.
    pub fn otp_tag(&self, challenge_id: u64, otp: &str) -> [u8; 32] {
        self.twofa_mac(b"otp tag", &[&challenge_id.to_be_bytes(), otp.as_bytes()])
    }

    /// A new random server key, as hex (for `gateway keys new-server-key`
    /// and the generated key file of a single-machine deployment).
    pub fn generate_hex() -> Zeroizing<String> {
        let mut key = Zeroizing::new([0u8; SERVER_KEY_LEN]);
        rand::rng().fill_bytes(key.as_mut());
        let mut hex = Zeroizing::new(String::with_capacity(SERVER_KEY_LEN * 2));
        for b in key.iter() {
            hex.push_str(&format!("{b:02x}"));
        }
        hex
    }

    /// Read the key from `path`.
    pub fn read(path: &Path) -> Result<ServerKey, ServerKeyError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| ServerKeyError::Read {
                    path: path.into(),
                    detail: e.to_string(),
                })?,
            );
        ServerKey::from_hex(&text)
    }

    /// Read the key from `path`, or create it there (mode 0600) if there is
    /// none. Returns the key and whether it was created.
    pub fn read_or_create(path: &Path) -> Result<(ServerKey, bool), ServerKeyError> {
        if path.exists() {
            return Ok((ServerKey::read(path)?, false));
        }
        let write_err = |e: std::io::Error| ServerKeyError::Write {
            path: path.into(),
            detail: e.to_string(),
        };
        let hex = ServerKey::generate_hex();
        super::write_new_secret_file(path, &hex).map_err(write_err)?;
        Ok((ServerKey::from_hex(&hex)?, true))
    }

    /// Which key this is (safe to log and store).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Wrap `secret` for `device` at `generation`.
    pub fn wrap(&self, device: &DeviceRef, generation: u32, secret: &MasterSecret) -> Wrapped {
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(device, generation);
        // Infallible: AES-GCM encryption fails only past 2^36 bytes of input.
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("a 32-byte plaintext encrypts");
        Wrapped {
            kek_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Open a secret wrapped for `device` at `generation`.
    pub fn unwrap(
        &self,
        device: &DeviceRef,
        generation: u32,
        wrapped: &Wrapped,
    ) -> Result<MasterSecret, ServerKeyError> {
        if wrapped.kek_id != self.id {
            return Err(ServerKeyError::WrongServerKey {
                device: device.to_string(),
                stored: wrapped.kek_id.clone(),
                current: self.id.clone(),
            });
        }
        let failed = || ServerKeyError::Unwrap {
            device: device.to_string(),
        };
        let nonce: [u8; WRAP_NONCE_LEN] =
            wrapped.nonce.as_slice().try_into().map_err(|_| failed())?;
        let aad = associated_data(device, generation);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: &wrapped.ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| failed())?,
        );
        let bytes: [u8; MASTER_SECRET_LEN] = plain.as_slice().try_into().map_err(|_| failed())?;
        Ok(MasterSecret::from_bytes(bytes))
    }
}

/// Binds a wrap to its device and key generation.
impl ServerKey {
    /// Seal a Custom PIN's digits for storage until delivery: nonce and
    /// AES-256-GCM ciphertext, bound to the lock and access (the AAD), so a
    /// sealed PIN copied to another row does not open.
    pub fn seal_pin(&self, lock: &str, access: &str, digits: &str) -> Vec<u8> {
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = pin_associated_data(lock, access);
        // Infallible: AES-GCM encryption fails only past 2^36 bytes of input.
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: digits.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("a short plaintext encrypts");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Open what [`ServerKey::seal_pin`] sealed for this lock and access.
    pub fn open_pin(
        &self,
        lock: &str,
        access: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<String>, ServerKeyError> {
        let failed = || ServerKeyError::Unwrap {
            device: format!("PIN {access} of lock {lock}"),
        };
        if sealed.len() < WRAP_NONCE_LEN {
            return Err(failed());
        }
        let (nonce, ciphertext) = sealed.split_at(WRAP_NONCE_LEN);
        let nonce: [u8; WRAP_NONCE_LEN] = nonce.try_into().map_err(|_| failed())?;
        let aad = pin_associated_data(lock, access);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| failed())?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| failed())?;
        Ok(Zeroizing::new(text.to_string()))
    }
}

fn pin_associated_data(lock: &str, access: &str) -> Vec<u8> {
    format!("lockfleet pin v1\0{lock}\0{access}").into_bytes()
}

fn associated_data(device: &DeviceRef, generation: u32) -> Vec<u8> {
    format!(
        "lockfleet device key v1\0{}\0{}\0{generation}",
        device.kind(),
        device.id()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher::{BridgeId, LockId};

    fn key() -> ServerKey {
        ServerKey::from_hex(&"42".repeat(SERVER_KEY_LEN)).unwrap()
    }

    fn secret() -> MasterSecret {
        MasterSecret::from_bytes([7; MASTER_SECRET_LEN])
    }

    #[test]
    fn a_wrapped_secret_opens_for_its_device_and_generation_only() {
        let k = key();
        let lock = DeviceRef::Lock(LockId::new("L1"));
        let w = k.wrap(&lock, 1, &secret());
        assert_eq!(k.unwrap(&lock, 1, &w).unwrap(), secret());
        assert_ne!(
            w.ciphertext[..MASTER_SECRET_LEN],
            secret().as_bytes()[..],
            "stored encrypted"
        );
        assert!(
            matches!(k.unwrap(&lock, 2, &w), Err(ServerKeyError::Unwrap { .. })),
            "another generation"
        );
        let other = DeviceRef::Bridge(BridgeId::new("L1"));
        assert!(
            matches!(k.unwrap(&other, 1, &w), Err(ServerKeyError::Unwrap { .. })),
            "another device"
        );
        let mut tampered = w.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(matches!(
            k.unwrap(&lock, 1, &tampered),
            Err(ServerKeyError::Unwrap { .. })
        ));
    }

    #[test]
    fn another_server_key_is_named_not_tried() {
        let lock = DeviceRef::Lock(LockId::new("L1"));
        let w = key().wrap(&lock, 1, &secret());
        let other = ServerKey::from_hex(&"43".repeat(SERVER_KEY_LEN)).unwrap();
        let err = other.unwrap(&lock, 1, &w).unwrap_err().to_string();
        assert!(
            err.contains(key().id()) && err.contains(other.id()),
            "{err}"
        );
    }

    #[test]
    fn bad_key_text_says_how_to_make_one_and_debug_hides_the_key() {
        let err = ServerKey::from_hex("abc").unwrap_err().to_string();
        assert!(
            err.contains("64 hex characters") && err.contains("new-server-key"),
            "{err}"
        );
        assert!(matches!(
            ServerKey::from_hex(&"zz".repeat(32)),
            Err(ServerKeyError::NotHex)
        ));
        let hex = "42".repeat(SERVER_KEY_LEN);
        let shown = format!("{:?}", ServerKey::from_hex(&hex).unwrap());
        assert!(
            !shown.contains(&hex[..8]) && shown.starts_with("ServerKey("),
            "{shown}"
        );
    }

    #[test]
    fn a_missing_key_file_is_created_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("server.key");
        let (a, created) = ServerKey::read_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (b, created) = ServerKey::read_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.id(), b.id());
    }

    #[test]
    fn a_sealed_pin_opens_only_for_its_lock_and_access() {
        let key = ServerKey::from_hex(&ServerKey::generate_hex()).unwrap();
        let sealed = key.seal_pin("L1", "pin-1", "482916");
        assert!(!sealed.windows(6).any(|w| w == b"482916"));
        assert_eq!(
            key.open_pin("L1", "pin-1", &sealed).unwrap().as_str(),
            "482916"
        );
        assert!(key.open_pin("L2", "pin-1", &sealed).is_err());
        assert!(key.open_pin("L1", "pin-2", &sealed).is_err());
        let other = ServerKey::from_hex(&ServerKey::generate_hex()).unwrap();
        assert!(other.open_pin("L1", "pin-1", &sealed).is_err());
    }
}
