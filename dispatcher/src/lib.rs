//! The domain of the lock fleet, free of any transport or database.
//!
//! * [`registry`]: locks, bridges and their organisations, as registered.
//! * [`import`]: turning a fleet file into registry records, with every rule
//!   of the guides checked and every refusal explained.
//! * [`telemetry`]: what a stored report means for the dashboard: the events
//!   it causes (state changes, low battery) and the lock's newest state.
//! * [`presence`]: which locks are online (heard within their heartbeat
//!   interval), counted in constant space per minute of deadline.
//!
//! Time is always passed in; nothing here sleeps, reads a clock or opens a socket.

pub mod import;
pub mod presence;
pub mod registry;
pub mod telemetry;

pub use registry::{BridgeId, BridgeRecord, LockId, LockRecord, OrgId, Registry, ReportPath};
