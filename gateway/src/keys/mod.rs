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
