//! Handing an OTP to whoever sends it to the person's phone. Two real
//! implementations: [`super::webhook::WebhookNotifier`] (an SMS provider's
//! HTTP API) and [`super::mqtt_notifier::MqttNotifier`] (the dashboard
//! backend delivers it; `notify/v1/{org}/sms`).
//!
//! The lock waits for the outcome, so a notifier is bounded in time: it
//! retries transient failures within its own deadline and then says why it
//! gave up. Neither the OTP nor the number ever reaches a log line or a
//! metric label: [`OtpMessage`]'s `Debug` hides both.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use zeroize::Zeroizing;

/// The default text of the message; `{otp}`, `{minutes}` and `{lock}` are
/// filled in.
pub const DEFAULT_TEMPLATE: &str =
    "Your iglooworks unlock code is {otp}. It expires in {minutes} minutes. Never share it.";

/// One OTP for one person.
#[derive(Clone)]
pub struct OtpMessage {
    pub challenge_id: u64,
    pub org: String,
    pub user_id: String,
    pub lock_id: String,
    /// E.164. Personal data: never logged.
    pub mobile: String,
    /// Secret.
    pub otp: Zeroizing<String>,
    /// When the OTP stops working, Unix milliseconds.
    pub expires_at_ms: u64,
    /// Its time to live, whole minutes rounded up (for the text).
    pub ttl_minutes: u64,
}

impl fmt::Debug for OtpMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpMessage")
            .field("challenge_id", &self.challenge_id)
            .field("org", &self.org)
            .field("user_id", &self.user_id)
            .field("lock_id", &self.lock_id)
            .finish_non_exhaustive()
    }
}

impl OtpMessage {
    /// `template` with `{otp}`, `{minutes}` and `{lock}` filled in.
    pub fn render(&self, template: &str) -> Zeroizing<String> {
        Zeroizing::new(
            template
                .replace("{minutes}", &self.ttl_minutes.to_string())
                .replace("{lock}", &self.lock_id)
                .replace("{otp}", &self.otp),
        )
    }
}

/// Why an OTP was not handed over. Messages never include the OTP, the
/// number or a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("the SMS provider did not answer within {timeout_ms} ms ({tries} tries): check that it is reachable from the gateway")]
    Timeout { timeout_ms: u64, tries: u32 },
    #[error("the SMS provider could not be reached ({detail}; {tries} tries): check --sms-webhook-url and the network")]
    Connect { detail: String, tries: u32 },
    #[error("the SMS provider answered HTTP {status} ({tries} tries): {hint}")]
    Status {
        status: u16,
        tries: u32,
        hint: &'static str,
    },
    #[error("the notification could not be queued for the dashboard backend: {0}")]
    Unavailable(String),
}

impl NotifyError {
    /// Every value of [`NotifyError::reason`].
    pub const REASONS: [&'static str; 4] = ["timeout", "connect", "http_status", "unavailable"];

    /// Stable label for the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            NotifyError::Timeout { .. } => "timeout",
            NotifyError::Connect { .. } => "connect",
            NotifyError::Status { .. } => "http_status",
            NotifyError::Unavailable(_) => "unavailable",
        }
    }
}

/// A boxed future, so notifiers can be trait objects.
pub type NotifyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>>;

/// Something that gets an OTP to a person.
pub trait Notifier: Send + Sync + 'static {
    /// `webhook` or `mqtt`, for metrics and logs.
    fn kind(&self) -> &'static str;
    /// Hand `msg` over; resolves once the provider (or the broker) took it,
    /// or with why not after the notifier's own retries and deadline.
    fn send<'a>(&'a self, msg: &'a OtpMessage) -> NotifyFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> OtpMessage {
        OtpMessage {
            challenge_id: 7,
            org: "acme".into(),
            user_id: "u1".into(),
            lock_id: "L1".into(),
            mobile: "+6591234567".into(),
            otp: Zeroizing::new("123456".into()),
            expires_at_ms: 1,
            ttl_minutes: 5,
        }
    }

    #[test]
    fn renders_the_template_and_hides_secrets_in_debug() {
        let m = msg();
        assert_eq!(
            *m.render(DEFAULT_TEMPLATE),
            "Your iglooworks unlock code is 123456. It expires in 5 minutes. Never share it."
        );
        let dbg = format!("{m:?}");
        assert!(
            !dbg.contains("123456") && !dbg.contains("91234567"),
            "{dbg}"
        );
    }
}
