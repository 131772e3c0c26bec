//! A simulated fleet of smart locks and bridges for the lock-fleet gateway.
//!
//! * [`fleet`]: generate, write and read the fleet file.
//! * [`lock`] and [`activity`]: one lock's behaviour, sans I/O, driven by
//!   [`clock`] time and [`timers`]; [`jobs`] and [`pins`]: what the jobs
//!   of its downlinks do to it (PIN table, at-most-once job memory, hard
//!   resets) and when an entered PIN opens it.
//! * [`coap_client`]: the CoAP client exchange layer (RFC 7252), sans I/O.
//! * [`coap_socket`]: the task per UDP socket that puts CoAP locks on the wire.
//! * [`mqtt_lock`], [`bridge`], [`mqtt_conn`], [`mqtt_fleet`]: MQTT locks and
//!   bridges, their connections and the task that runs them.
//! * [`security`]: the device side of the security profile: OSCORE
//!   contexts from the fleet's pairing secrets, protected CoAP requests and
//!   MQTT messages, verified answers, MQTT logins.
//! * [`net`]: injected loss and duplication; [`stats`], [`ledger`] and
//!   [`latency`]: what happened.
//! * [`state`] and [`persist`]: each device's counters (report and event
//!   seqs, OSCORE sender sequence) carried from run to run in a state file
//!   (`fleet.csv.state` beside the fleet file), reserved ahead as RFC 8613
//!   Appendix B.1.1 does, so a restarted or crashed simulator never reuses a
//!   (lock, seq) the gateway has stored nor an OSCORE sequence number.
//! * [`bridge_relay`]: what a bridge does with the gateway's commands
//!   (verify, replay window, Bluetooth delay), sans I/O.
//! * [`run`](mod@run): a whole run ([`run::SimConfig`] in, [`run::RunReport`] out);
//!   [`control`]: reaching one lock of a running simulation
//!   ([`run::RunHandle::lock`]): heartbeat now, enter a PIN, enter a 2FA
//!   passcode or OTP, hard reset; or one bridge ([`run::RunHandle::bridge`]):
//!   offline, online, status.
//! * [`twofa`] and [`phone`]: 2FA people visiting INB1-2FA locks (when,
//!   where, what they type: sans I/O) and the SMS inbox of their phones, an
//!   HTTP server the gateway's SMS webhook posts OTPs to.

pub mod activity;
pub mod bridge;
pub mod bridge_relay;
pub mod clock;
pub mod coap_client;
pub mod coap_socket;
pub mod control;
pub mod fleet;
pub mod jobs;
pub mod latency;
pub mod ledger;
pub mod lock;
pub mod mqtt_conn;
pub mod mqtt_fleet;
pub mod mqtt_lock;
pub mod net;
pub mod persist;
pub mod phone;
pub mod pins;
pub mod run;
pub mod security;
pub mod state;
pub mod stats;
pub mod timers;
pub mod twofa;

pub use bridge_relay::BleDelay;
pub use control::{BridgeHandle, BridgeStatus, ControlError, Conversation, LockHandle, LockStatus};
pub use fleet::{Fleet, FleetSpec};
pub use latency::{AckLatency, TwoFactorLatency, TwoFactorLeg};
pub use ledger::{AckedReport, AnsweredExchange, PendingReport, PubackedReport};
pub use lock::{Counters, Reporting};
pub use persist::StateOptions;
pub use phone::{InboxMode, ReceivedOtp, ReceivedSms, SmsInbox};
pub use run::{run, start, MqttAcks, RunHandle, RunReport, SimConfig};
pub use stats::TwoFactorCounts;
pub use twofa::{
    InboxSource, PersonHandle, TwoFactorPerson, TwoFactorSim, VisitEnd, VisitPlan, VisitReport,
};
