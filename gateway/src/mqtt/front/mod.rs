//! The MQTT front: the only MQTT listener outside loopback. Devices and the
//! dashboard backend connect here; the front authenticates each client at
//! CONNECT, confines it to its own topics, limits connection attempts per
//! source, optionally terminates TLS, and forwards the connection to the
//! broker of its kind: device clients to the device broker, the dashboard
//! backend to the backend broker. rumqttd has no per-topic ACL and no hook
//! on SUBSCRIBE, so the confinement lives here, in front of it.
//!
//! * [`auth`]: checking logins against stored Argon2id hashes, remembering successes.
//! * [`policy`]: who may publish and subscribe where.
//! * [`session`]: one connection's state machine (sans-I/O).
//! * [`rate`]: per-source token buckets (sans-I/O).

pub mod auth;
pub mod policy;
pub mod rate;
pub mod server;
pub mod session;
pub mod tls;
