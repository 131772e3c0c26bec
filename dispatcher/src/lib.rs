//! The domain of the lock fleet, free of any transport or database.
//!
//! * [`registry`]: locks, bridges and their organisations, as registered.
//! * [`import`]: turning a fleet file into registry records, with every rule
//!   of the guides checked and every refusal explained.
//! * [`telemetry`]: what a stored report means for the dashboard: the events
//!   it causes (state changes, low battery) and the lock's newest state.
//! * [`presence`]: when a lock counts as online (heard within its heartbeat
//!   interval plus a grace).
//! * [`schedule`]: when each NB-IoT lock should wake next (its phase).
//! * [`jobs`]: the job rules of the guides (Custom PIN, delete PIN, intervals,
//!   delete and recreate), lock results, and packing jobs into a downlink.
//! * [`keys`]: device key records and pairing secrets (no cryptography).
//! * [`connectivity`]: whether a bridge's status report changes its
//!   connectivity, against the stored status.
//! * [`bridge_queue`]: what each Wi-Fi bridge is sent next, with timeouts and retries.
//! * [`twofa`]: 2FA access: passcode and OTP decisions, rate limits and
//!   lock-outs, grant windows in the lock's time zone.
//!
//! Time is always passed in; nothing here sleeps, reads a clock or opens a socket.

pub mod bridge_queue;
pub mod connectivity;
pub mod import;
pub mod jobs;
pub mod keys;
pub mod presence;
pub mod registry;
pub mod schedule;
pub mod telemetry;
pub mod twofa;

pub use registry::{
    BridgeId, BridgeRecord, Interner, KnownIds, LockId, LockRecord, LockRegistration, NoKnownIds,
    OrgId, Registry, ReportPath,
};
