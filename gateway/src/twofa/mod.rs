//! 2FA unlock at the edge: hashing what the lock sent, handing the OTP to
//! a notifier, and the notifiers themselves. The rules are
//! `dispatcher::twofa`; the state is in the store.

pub mod gate;
pub mod mqtt_notifier;
pub mod notifier;
pub mod webhook;

pub use gate::{Gate, GateParts, TwoFactorEntry};
pub use notifier::{Notifier, NotifyError, OtpMessage};
