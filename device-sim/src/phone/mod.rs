//! The phones of 2FA people: an [`SmsInbox`], a real HTTP server standing
//! in for the SMS provider the gateway's notifier calls. The gateway POSTs
//! `{"to", "message", "reference", "expires_at_ms"}` to [`SmsInbox::url`];
//! the inbox records every request (malformed ones too), finds the OTP in
//! the message ([`extract_otp`]), and hands it to whoever waits for that
//! number ([`SmsInbox::wait_otp`]): a simulated person, or a test.
//!
//! Failure injection ([`SmsInbox::set_mode`]): answer with another status,
//! answer late, or hang up without answering, as a provider in trouble does.
//!
//! `sms` reads the webhook body (sans I/O); `server` is the hyper server.
//! Neither touches a lock: people ([`crate::twofa`]) connect the two.
//! OTPs and message texts are secrets: kept wiped-on-drop, never shown by
//! `Debug`, never logged.

mod server;
mod sms;

pub use sms::{extract_otp, parse_webhook, reference_challenge, SmsWebhook, WebhookError};

use schemas::twofa::mask_mobile;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// The path the webhook POSTs to.
pub const SMS_PATH: &str = "/sms";

/// Largest request body read: an SMS webhook is a few hundred bytes; a
/// larger body is answered 413 and recorded as malformed.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Requests kept; past it the oldest are forgotten. A long run at a few
/// unlocks a second stays within it for hours; a waiter looks at recent
/// requests only.
pub const MAX_RECORDED: usize = 65_536;

/// Delivered OTPs kept per number for waiters: a person waits for the
/// newest, so a handful covers a number whose SMS come faster than its
/// owner types them.
pub const MAX_KEPT_PER_NUMBER: usize = 16;

/// Connections served at once (mini-redis `MAX_CONNECTIONS`): a gateway
/// keeps a small pool; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;

/// How the inbox answers the webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxMode {
    /// 200 with a message id for a good request; 400 (404, 405, 413) and a
    /// reason for a malformed one.
    Up,
    /// Every request answered with this status (a code outside 200..=599
    /// is sent as 500). A 2xx still delivers the OTP; others do not.
    Status(u16),
    /// As [`InboxMode::Up`], after this long; the OTP is delivered when the
    /// answer goes.
    Delay(Duration),
    /// The connection is closed without an answer; nothing is delivered.
    Drop,
}

/// One request the inbox received.
#[derive(Clone)]
pub struct ReceivedSms {
    /// When it arrived (its body read).
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Every header, names lower-case, in order.
    pub headers: Vec<(String, String)>,
    pub to: Option<String>,
    pub reference: Option<String>,
    pub expires_at_ms: Option<u64>,
    /// The text: holds the OTP.
    pub message: Option<Zeroizing<String>>,
    /// The OTP found in the message.
    pub otp: Option<Zeroizing<String>>,
    /// Why it was refused as malformed (answered 4xx in [`InboxMode::Up`]).
    pub malformed: Option<String>,
    /// The status answered; `None` while delayed, or if the connection was
    /// closed without an answer ([`InboxMode::Drop`]).
    pub status: Option<u16>,
}

impl ReceivedSms {
    /// True when the phone got the OTP: well formed and answered 2xx.
    pub fn delivered(&self) -> bool {
        self.malformed.is_none()
            && self.otp.is_some()
            && self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn delivered_otp(&self) -> Option<ReceivedOtp> {
        if !self.delivered() {
            return None;
        }
        Some(ReceivedOtp {
            at: self.at,
            to: self.to.clone()?,
            reference: self.reference.clone()?,
            otp: self.otp.clone()?,
            expires_at_ms: self.expires_at_ms?,
        })
    }
}

/// Header names whose values are credentials: `Debug` hides them.
fn secret_header(name: &str) -> bool {
    matches!(name, "authorization" | "proxy-authorization" | "cookie")
        || ["signature", "token", "secret", "key"]
            .iter()
            .any(|s| name.contains(s))
}

impl fmt::Debug for ReceivedSms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let v = if secret_header(n) { "<redacted>" } else { v };
                (n.as_str(), v)
            })
            .collect();
        f.debug_struct("ReceivedSms")
            .field("at", &self.at)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &headers)
            .field("to", &self.to.as_deref().map(mask_mobile))
            .field("reference", &self.reference)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("otp", &self.otp.as_ref().map(|_| "<redacted>"))
            .field("malformed", &self.malformed)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// An OTP the phone of `to` received.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedOtp {
    /// When the webhook request arrived.
    pub at: Instant,
    pub to: String,
    pub reference: String,
    /// Secret: type it at the lock, never log it.
    pub otp: Zeroizing<String>,
    pub expires_at_ms: u64,
}

impl ReceivedOtp {
    /// The challenge the reference names (`2fa-<challenge id>`).
    pub fn challenge(&self) -> Option<u64> {
        reference_challenge(&self.reference)
    }
}

impl fmt::Debug for ReceivedOtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedOtp")
            .field("at", &self.at)
            .field("to", &mask_mobile(&self.to))
            .field("reference", &self.reference)
            .field("otp", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// What the server and the inbox's handles share.
struct Shared {
    state: Mutex<State>,
}

struct State {
    mode: InboxMode,
    /// (record id, request), oldest first.
    records: VecDeque<(u64, ReceivedSms)>,
    next_id: u64,
    /// Each number's phone: its delivered OTPs and who waits for them. A
    /// waiter looks at its own number only and is woken by a delivery to it
    /// only, so a load test's thousands of phones cost one lookup per SMS,
    /// not a scan of every request per waiter per SMS.
    phones: HashMap<String, Phone>,
}

#[derive(Default)]
struct Phone {
    /// (record id, OTP), oldest first, at most [`MAX_KEPT_PER_NUMBER`].
    delivered: VecDeque<(u64, ReceivedOtp)>,
    /// Woken at every delivery to this number.
    arrived: Arc<Notify>,
}

impl Phone {
    fn deliver(&mut self, id: u64, otp: ReceivedOtp) {
        // In arrival order: a delayed answer may deliver after a later one.
        let at = self.delivered.partition_point(|(i, _)| *i < id);
        self.delivered.insert(at, (id, otp));
        if self.delivered.len() > MAX_KEPT_PER_NUMBER {
            self.delivered.pop_front();
        }
        self.arrived.notify_waiters();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic mid-update elsewhere; the
        // records are still readable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mode(&self) -> InboxMode {
        self.state().mode
    }

    /// Records `sms`; returns its id.
    fn record(&self, sms: ReceivedSms) -> u64 {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        if state.records.len() >= MAX_RECORDED {
            state.records.pop_front();
        }
        state.records.push_back((id, sms));
        id
    }

    /// Sets the status answered to request `id`; a 2xx delivers its OTP.
    fn answered(&self, id: u64, status: u16) {
        let mut state = self.state();
        let Some((_, sms)) = state.records.iter_mut().rev().find(|(i, _)| *i == id) else {
            return;
        };
        sms.status = Some(status);
        if let Some(otp) = sms.delivered_otp() {
            state
                .phones
                .entry(otp.to.clone())
                .or_default()
                .deliver(id, otp);
        }
    }

    /// The first OTP delivered to a number that `wanted` accepts, arrived
    /// at or after `after`, and what a delivery to `mobile` wakes.
    fn find(
        &self,
        mobile: &str,
        wanted: &impl Fn(&ReceivedOtp) -> bool,
        after: Instant,
    ) -> (Option<ReceivedOtp>, Arc<Notify>) {
        let mut state = self.state();
        let phone = state.phones.entry(mobile.to_string()).or_default();
        let found = phone
            .delivered
            .iter()
            .map(|(_, o)| o)
            .find(|o| o.at >= after && wanted(o))
            .cloned();
        (found, phone.arrived.clone())
    }
}

/// Stops the server when the last [`SmsInbox`] clone goes.
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The SMS provider stand-in. Cheap to clone; the server runs until the
/// last clone is dropped.
///
/// ```no_run
/// # async fn example() -> std::io::Result<()> {
/// use device_sim::phone::{InboxMode, SmsInbox};
/// use std::time::{Duration, Instant};
///
/// let inbox = SmsInbox::start("127.0.0.1:0".parse().unwrap()).await?;
/// // ... configure the gateway's SMS webhook with inbox.url() ...
/// let typed = Instant::now();
/// // ... a lock sends the passcode; the gateway answers otp_sent ...
/// let sms = inbox.wait_otp("+6591234567", typed, Duration::from_secs(5)).await;
/// let otp = sms.expect("the OTP reached the phone");
/// // ... the lock sends otp.otp.as_str() with the challenge ...
/// inbox.set_mode(InboxMode::Status(503)); // the provider fails from now on
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SmsInbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

impl fmt::Debug for SmsInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmsInbox({})", self.url())
    }
}

impl SmsInbox {
    /// Binds `addr` (port 0: any free port) and serves in a task of the
    /// current tokio runtime, in [`InboxMode::Up`].
    pub async fn start(addr: SocketAddr) -> std::io::Result<SmsInbox> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: InboxMode::Up,
                records: VecDeque::new(),
                next_id: 0,
                phones: HashMap::new(),
            }),
        });
        let stop = CancellationToken::new();
        tokio::spawn(server::serve(listener, shared.clone(), stop.clone()));
        Ok(SmsInbox {
            addr,
            shared,
            _stop: Arc::new(StopOnDrop(stop)),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The webhook URL to give the gateway: `http://{addr}/sms`.
    pub fn url(&self) -> String {
        format!("http://{}{SMS_PATH}", self.addr)
    }

    /// How requests are answered from now on.
    pub fn set_mode(&self, mode: InboxMode) {
        self.shared.state().mode = mode;
    }

    pub fn mode(&self) -> InboxMode {
        self.shared.mode()
    }

    /// Every request kept (the last [`MAX_RECORDED`]), oldest first.
    pub fn requests(&self) -> Vec<ReceivedSms> {
        let state = self.shared.state();
        state.records.iter().map(|(_, r)| r.clone()).collect()
    }

    /// The first OTP delivered to `mobile` that arrived at or after `after`,
    /// waiting up to `timeout` for it (zero: only what is there now).
    pub async fn wait_otp(
        &self,
        mobile: &str,
        after: Instant,
        timeout: Duration,
    ) -> Option<ReceivedOtp> {
        self.wait_for(mobile, |_| true, after, timeout).await
    }

    /// As [`SmsInbox::wait_otp`], for the OTP of `challenge` only (the
    /// reference `2fa-{challenge}`), so a late SMS of an earlier challenge
    /// is never typed for a new one. A reference that names no challenge
    /// (another format) matches any.
    pub async fn wait_challenge_otp(
        &self,
        mobile: &str,
        challenge: u64,
        after: Instant,
        timeout: Duration,
    ) -> Option<ReceivedOtp> {
        let wanted = |o: &ReceivedOtp| o.challenge().is_none_or(|c| c == challenge);
        self.wait_for(mobile, wanted, after, timeout).await
    }

    async fn wait_for(
        &self,
        mobile: &str,
        wanted: impl Fn(&ReceivedOtp) -> bool,
        after: Instant,
        timeout: Duration,
    ) -> Option<ReceivedOtp> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (found, arrived) = self.shared.find(mobile, &wanted, after);
            if found.is_some() {
                return found;
            }
            // Registered before looking again, so a delivery in between
            // wakes us (Notify::notify_waiters wakes only enabled waiters).
            let notified = arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let (Some(otp), _) = self.shared.find(mobile, &wanted, after) {
                return Some(otp);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}
