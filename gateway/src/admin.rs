//! Operator commands on devices and their keys, behind `gateway devices ...`:
//! registering a fleet file, rotating a device's key, deregistering a
//! device. Generated secrets leave the gateway only through a secrets file
//! the operator names: created new (never overwriting), mode 0600, written
//! and synced to disk before the keys are stored, so a secret is never
//! stored that nobody was given.

use crate::keys::ServerKey;
use crate::store::{keys::devices_of, ImportSummary, Store, StoreError};
use dispatcher::import::ParsedFleet;
use dispatcher::keys::{DeviceRef, MasterSecret, MASTER_SECRET_LEN};
use dispatcher::Registry;
use rand::RngCore;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What an operator command can run into.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{count} new device(s) have no master_secret in the fleet file (first: {first}): pass --secrets-out FILE to have secrets generated and written there, once, or put the pairing secrets in the file")]
    SecretsNeeded { count: usize, first: String },
    #[error("cannot create the secrets file {}: {detail} (it must not exist yet: secrets are never overwritten)", path.display())]
    SecretsFile { path: PathBuf, detail: String },
    #[error("no lock or bridge {0:?} is registered: `gateway devices list` shows them")]
    Unknown(String),
    #[error(
        "both a lock and a bridge are called {0:?}: say which with --kind lock or --kind bridge"
    )]
    Ambiguous(String),
}

/// A new secrets file: `kind,id,master_secret`, one device per line.
pub struct SecretsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl SecretsFile {
    /// Create `path`; fails if it exists.
    pub fn create(path: &Path) -> Result<SecretsFile, AdminError> {
        let fail = |e: std::io::Error| AdminError::SecretsFile {
            path: path.into(),
            detail: e.to_string(),
        };
        let mut file = crate::keys::create_secret_file(path).map_err(fail)?;
        file.write_all(b"kind,id,master_secret\n").map_err(fail)?;
        Ok(SecretsFile {
            path: path.into(),
            file,
        })
    }

    /// Write every secret and sync the file to disk.
    pub fn write_all(
        mut self,
        secrets: &[(DeviceRef, MasterSecret)],
    ) -> Result<PathBuf, AdminError> {
        let fail = |e: std::io::Error| AdminError::SecretsFile {
            path: self.path.clone(),
            detail: e.to_string(),
        };
        for (device, secret) in secrets {
            let line = zeroize::Zeroizing::new(format!(
                "{},{},{}\n",
                device.kind(),
                device.id(),
                secret.to_hex().as_str()
            ));
            self.file.write_all(line.as_bytes()).map_err(fail)?;
        }
        self.file.sync_all().map_err(fail)?;
        Ok(self.path)
    }
}

/// A new random master secret.
pub fn generate_secret() -> MasterSecret {
    let mut bytes = [0u8; MASTER_SECRET_LEN];
    rand::rng().fill_bytes(&mut bytes);
    let secret = MasterSecret::from_bytes(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    secret
}

/// What `import` did.
#[derive(Debug)]
pub struct ImportReport {
    pub summary: ImportSummary,
    /// How many secrets were generated, and where they were written.
    pub generated: Option<(usize, PathBuf)>,
}

/// Register `fleet`. New devices without a secret in the file get a
/// generated one, written to `secrets_out` before anything is stored; with
/// no `secrets_out`, such devices make the import fail and nothing changes.
pub async fn import(
    store: &Store,
    server_key: &ServerKey,
    mut fleet: ParsedFleet,
    secrets_out: Option<&Path>,
) -> Result<ImportReport, AdminError> {
    let given: std::collections::HashSet<DeviceRef> =
        fleet.secrets.iter().map(|(d, _)| d.clone()).collect();
    let keyless: Vec<DeviceRef> = store
        .devices_without_keys(&devices_of(&fleet))
        .await?
        .into_iter()
        .filter(|d| !given.contains(d))
        .collect();
    let mut generated = None;
    if !keyless.is_empty() {
        let Some(path) = secrets_out else {
            return Err(AdminError::SecretsNeeded {
                count: keyless.len(),
                first: keyless[0].to_string(),
            });
        };
        let file = SecretsFile::create(path)?;
        let secrets: Vec<(DeviceRef, MasterSecret)> = keyless
            .into_iter()
            .map(|d| (d, generate_secret()))
            .collect();
        let path = file.write_all(&secrets)?;
        generated = Some((secrets.len(), path));
        fleet.secrets.extend(secrets);
    }
    let summary = store.import_fleet(&fleet, server_key).await?;
    Ok(ImportReport { summary, generated })
}

/// The registered device called `id` (of `kind`, if given).
pub fn find(registry: &Registry, id: &str, kind: Option<&str>) -> Result<DeviceRef, AdminError> {
    let lock = registry.lock(id).map(|l| DeviceRef::Lock(l.id.clone()));
    let bridge = registry.bridge(id).map(|b| DeviceRef::Bridge(b.id.clone()));
    match (kind, lock, bridge) {
        (Some("lock"), Some(l), _) | (None, Some(l), None) => Ok(l),
        (Some("bridge"), _, Some(b)) | (None, None, Some(b)) => Ok(b),
        (None, Some(_), Some(_)) => Err(AdminError::Ambiguous(id.into())),
        _ => Err(AdminError::Unknown(id.into())),
    }
}

/// Give `device` a new key: generated, written to `secrets_out` (created
/// new) first, then stored. The old key fails from the device's next message.
/// Returns the new generation.
pub async fn rotate(
    store: &Store,
    server_key: &ServerKey,
    device: &DeviceRef,
    secrets_out: &Path,
) -> Result<u32, AdminError> {
    let file = SecretsFile::create(secrets_out)?;
    let secret = generate_secret();
    file.write_all(&[(device.clone(), secret.clone())])?;
    Ok(store.rotate_key(server_key, device, &secret).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_file_is_private_new_only_and_holds_every_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.csv");
        let s = generate_secret();
        let lock = DeviceRef::Lock(dispatcher::LockId::new("L1"));
        SecretsFile::create(&path)
            .unwrap()
            .write_all(&[(lock, s.clone())])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("kind,id,master_secret\nlock,L1,{}\n", s.to_hex().as_str())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let err = SecretsFile::create(&path).err().unwrap().to_string();
        assert!(err.contains("never overwritten"), "{err}");
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(generate_secret(), generate_secret());
    }
}
