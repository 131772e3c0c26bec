//! Device keys at the gateway's edge: the server key that wraps every
//! device's master secret at rest ([`server_key`]), the MQTT password hashes
//! ([`password`]), and the ring of OSCORE contexts the transports look
//! devices up in ([`ring`]).
//!
//! Nothing here logs a secret, puts one in a metric label, or publishes one:
//! secrets are wiped on drop and their `Debug` prints nothing of them. The
//! only way a secret leaves the gateway is the secrets file an operator asks
//! for when devices are registered or rotated (written once, mode 0600).

pub mod password;
pub mod ring;
pub mod server_key;

pub use ring::{DeviceKey, KeyRing, LoadReport};
pub use server_key::{ServerKey, ServerKeyError, Wrapped};

use std::path::Path;

/// Create `path` readable and writable by its owner only (0600); fails if
/// it exists, so a secret is never overwritten.
pub fn create_secret_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Create `path` (and its directory) as [`create_secret_file`] does, write
/// `text` and a newline to it, and sync it to disk.
pub fn write_new_secret_file(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = create_secret_file(path)?;
    std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes())?;
    file.sync_all()
}
