//! Checking a CONNECT's login: which identity a username names, and whether
//! the password matches its stored Argon2id hash. Verifying runs on the
//! blocking pool (an Argon2 hash is CPU work), and a successful check is
//! remembered by (username, SHA-256 of the password, key generation), so a
//! device reconnecting (after a broker restart, a whole fleet at once) costs
//! one hash, not one per attempt. A rotated or revoked key changes the
//! generation (or removes the entry), so the memory never outlives a key.
//! Failed checks are not remembered: guessing stays slow.

use super::policy::Identity;
use crate::keys::password;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Successful checks remembered at most; past it the memory is cleared (it
/// refills from the next connections, one hash each).
pub const MAX_REMEMBERED: usize = 1_000_000;

/// A login the gateway knows: who it is and the hash to check. Every new
/// or rotated key has a new hash (a new random salt), so a remembered
/// success is tied to the hash it was checked against.
#[derive(Clone, Debug)]
pub struct Account {
    pub identity: Identity,
    pub password_hash: String,
}

/// Where accounts come from: the key ring for devices, the configuration
/// for the dashboard backend.
pub trait Accounts: Send + Sync + 'static {
    /// Every account `username` may be (a lock and a bridge may share an id).
    fn accounts(&self, username: &str) -> Vec<Account>;
}

/// Checks logins against [`Accounts`], remembering successes.
pub struct Authenticator<A> {
    accounts: Arc<A>,
    remembered: DashMap<[u8; 32], (Identity, [u8; 32])>,
}

impl<A: Accounts> Authenticator<A> {
    pub fn new(accounts: Arc<A>) -> Self {
        Authenticator {
            accounts,
            remembered: DashMap::new(),
        }
    }

    /// The identity `username` proves with `password`, or `None`.
    pub async fn check(&self, username: &str, password: &str) -> Option<Identity> {
        let accounts = self.accounts.accounts(username);
        if accounts.is_empty() {
            return None;
        }
        let key = remember_key(username, password);
        if let Some(hit) = self.remembered.get(&key) {
            let (identity, hash) = hit.value().clone();
            if accounts
                .iter()
                .any(|a| a.identity == identity && fingerprint(&a.password_hash) == hash)
            {
                return Some(identity);
            }
        }
        let password = zeroize::Zeroizing::new(password.to_string());
        let found = tokio::task::spawn_blocking(move || {
            accounts
                .into_iter()
                .find(|a| password::verify(&password, &a.password_hash))
        })
        .await
        .ok()
        .flatten()?;
        if self.remembered.len() >= MAX_REMEMBERED {
            self.remembered.clear();
        }
        self.remembered.insert(
            key,
            (found.identity.clone(), fingerprint(&found.password_hash)),
        );
        Some(found.identity)
    }
}

/// Which stored hash a success was checked against.
fn fingerprint(password_hash: &str) -> [u8; 32] {
    Sha256::digest(password_hash.as_bytes()).into()
}

/// What a success is remembered under: never the password itself.
fn remember_key(username: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The gateway's accounts: every device in the key ring (its MQTT password
/// hash; a lock and a bridge may share an id) and the dashboard backend.
pub struct GatewayAccounts {
    ring: Arc<crate::keys::KeyRing>,
    backend_username: String,
    backend_hash: String,
}

impl GatewayAccounts {
    pub fn new(
        ring: Arc<crate::keys::KeyRing>,
        backend_username: String,
        backend_hash: String,
    ) -> Self {
        GatewayAccounts {
            ring,
            backend_username,
            backend_hash,
        }
    }
}

impl Accounts for GatewayAccounts {
    fn accounts(&self, username: &str) -> Vec<Account> {
        use dispatcher::keys::DeviceRef;
        use dispatcher::{BridgeId, LockId};
        let mut found = Vec::new();
        if username == self.backend_username {
            found.push(Account {
                identity: Identity::Backend,
                password_hash: self.backend_hash.clone(),
            });
        }
        if schemas::device::valid_id(username) {
            for device in [
                DeviceRef::Lock(LockId::new(username)),
                DeviceRef::Bridge(BridgeId::new(username)),
            ] {
                if let Some(key) = self.ring.get(&device) {
                    found.push(Account {
                        identity: Identity::Device(device),
                        password_hash: key.mqtt_password_hash(),
                    });
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher::keys::DeviceRef;
    use dispatcher::LockId;
    use std::sync::Mutex;

    /// Accounts that count how often they are asked.
    struct Table(Mutex<Vec<(String, Account)>>);

    impl Accounts for Table {
        fn accounts(&self, username: &str) -> Vec<Account> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|(u, _)| u == username)
                .map(|(_, a)| a.clone())
                .collect()
        }
    }

    fn lock_account(pw: &str) -> (String, Account) {
        let identity = Identity::Device(DeviceRef::Lock(LockId::new("L1")));
        (
            "L1".into(),
            Account {
                identity,
                password_hash: password::hash(pw, password::DEVICE_COST),
            },
        )
    }

    #[tokio::test]
    async fn the_right_password_passes_a_wrong_one_and_a_stranger_do_not() {
        let a = Authenticator::new(Arc::new(Table(Mutex::new(vec![lock_account("pw-1")]))));
        assert!(matches!(
            a.check("L1", "pw-1").await,
            Some(Identity::Device(_))
        ));
        assert_eq!(a.check("L1", "pw-2").await, None);
        assert_eq!(a.check("L9", "pw-1").await, None);
    }

    #[tokio::test]
    async fn a_remembered_success_does_not_outlive_a_rotated_key() {
        let table = Arc::new(Table(Mutex::new(vec![lock_account("pw-1")])));
        let a = Authenticator::new(table.clone());
        assert!(a.check("L1", "pw-1").await.is_some());
        assert!(a.check("L1", "pw-1").await.is_some(), "remembered");
        // Rotation: another password; the old one fails at once.
        *table.0.lock().unwrap() = vec![lock_account("pw-2")];
        assert_eq!(a.check("L1", "pw-1").await, None);
        assert!(a.check("L1", "pw-2").await.is_some());
        // Deregistration: nothing to check against.
        table.0.lock().unwrap().clear();
        assert_eq!(a.check("L1", "pw-2").await, None);
        // Registered again with the same password (a new hash): checked
        // afresh, and passes; with another, the remembered one fails.
        *table.0.lock().unwrap() = vec![lock_account("pw-2")];
        assert!(a.check("L1", "pw-2").await.is_some());
        *table.0.lock().unwrap() = vec![lock_account("pw-3")];
        assert_eq!(a.check("L1", "pw-2").await, None);
    }
}
