//! The SMS provider's HTTP API as a [`Notifier`]: one JSON `POST` per OTP,
//! retried with backoff on what may pass (timeouts, broken connections,
//! 408, 429, 5xx) and never on what will not (any other 4xx or a redirect:
//! the gateway is configured wrong, and retrying only delays the answer).
//!
//! The request carries the OTP and the number; nothing else this module
//! emits does. Errors and log lines name the challenge, the HTTP status and
//! the try, never the OTP, the number, the credential, the URL (it may hold
//! an API key) or the provider's answer (it may echo the number). This
//! module owns the wire format of the webhook; when to send and what the
//! lock is told is `dispatcher::twofa`'s.

use super::notifier::{Notifier, NotifyError, NotifyFuture, OtpMessage, DEFAULT_TEMPLATE};
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{redirect, Client, StatusCode, Url};
use std::fmt;
use std::time::Duration;
use zeroize::Zeroizing;

/// How long one try may take, connect and TLS included: long enough for a
/// provider on another continent, short enough that three tries fit in the
/// time a person waits at the door.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per OTP: one plus two retries covers a provider's brief hiccup.
pub const DEFAULT_TRIES: u32 = 3;
/// The pause before the first retry; each later pause doubles.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);
/// A pause grows by up to 1/`JITTER_DIVISOR` of itself at random (20 %), so
/// gateways that failed together do not retry in step, yet no pause is
/// shorter than configured.
const JITTER_DIVISOR: u32 = 5;

const HINT_AUTH: &str =
    "the provider refused the credential: check LOCKFLEET_SMS_WEBHOOK_AUTH (`Name: value`)";
const HINT_NOT_FOUND: &str = "the provider has no such endpoint: check --sms-webhook-url";
const HINT_REDIRECT: &str =
    "the provider redirects (not followed, so the credential stays put): set --sms-webhook-url to the final URL";
const HINT_TRANSIENT: &str =
    "the provider is failing or rate-limiting the gateway; it was retried with backoff: check its status page and the account's sending limits";
const HINT_REJECTED: &str =
    "the provider rejected the request: check --sms-webhook-url and --sms-template against its API";

/// Where and how to send; [`WebhookConfig::new`] fills in the defaults.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The provider's endpoint, `http` or `https`.
    pub url: String,
    /// A header that authenticates the gateway, e.g. (`Authorization`,
    /// `Bearer ...`). The value is secret: never logged, wiped on drop.
    pub auth_header: Option<(String, Zeroizing<String>)>,
    /// The message text; must contain `{otp}` (see [`OtpMessage::render`]).
    pub template: String,
    /// How long one try may take.
    pub timeout: Duration,
    /// Tries per OTP, at least 1 (1 means no retry).
    pub tries: u32,
    /// The pause before the first retry; doubled for each later one, plus a
    /// little jitter.
    pub backoff: Duration,
}

impl WebhookConfig {
    /// `url` with no credential, [`DEFAULT_TEMPLATE`], [`DEFAULT_TIMEOUT`],
    /// [`DEFAULT_TRIES`] and [`DEFAULT_BACKOFF`].
    pub fn new(url: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            auth_header: None,
            template: DEFAULT_TEMPLATE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            tries: DEFAULT_TRIES,
            backoff: DEFAULT_BACKOFF,
        }
    }

    /// Whether the notifier can be built from this; the error says what is
    /// wrong and what to do.
    pub fn check(&self) -> Result<(), WebhookConfigError> {
        self.checked().map(drop)
    }

    fn checked(&self) -> Result<Checked, WebhookConfigError> {
        let url = Url::parse(&self.url).map_err(|e| match e {
            url::ParseError::EmptyHost => WebhookConfigError::UrlHost,
            e => WebhookConfigError::UrlSyntax(e),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookConfigError::UrlScheme(url.scheme().to_owned()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(WebhookConfigError::UrlHost);
        }
        let auth = match &self.auth_header {
            None => None,
            Some((name, value)) => {
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| WebhookConfigError::HeaderName)?;
                let mut value = HeaderValue::from_str(value.trim())
                    .ok()
                    .filter(|v| !v.is_empty())
                    .ok_or(WebhookConfigError::HeaderValue)?;
                // Keeps it out of `Debug` and out of any HPACK table.
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        if !self.template.contains("{otp}") {
            return Err(WebhookConfigError::TemplateWithoutOtp);
        }
        if self.tries == 0 {
            return Err(WebhookConfigError::NoTries);
        }
        if self.timeout.is_zero() {
            return Err(WebhookConfigError::NoTimeout);
        }
        Ok(Checked { url, auth })
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redacted(&self.url))
            .field("auth_header", &self.auth_header.as_ref().map(|(n, _)| n))
            .field("template", &self.template)
            .field("timeout", &self.timeout)
            .field("tries", &self.tries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// `url` without what may be a credential: user info and query.
fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            if u.query().is_some() {
                u.set_query(Some("…"));
            }
            u.to_string()
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// What is wrong with a [`WebhookConfig`]. Never repeats the credential or
/// the URL (either may hold a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("--sms-webhook-url is not a URL ({0}): give the provider's full endpoint, e.g. https://sms.example.com/v1/messages")]
    UrlSyntax(url::ParseError),
    #[error("--sms-webhook-url has scheme `{0}`: use https:// (or http:// on a trusted network)")]
    UrlScheme(String),
    #[error("--sms-webhook-url has no host: give the provider's full endpoint, e.g. https://sms.example.com/v1/messages")]
    UrlHost,
    #[error("LOCKFLEET_SMS_WEBHOOK_AUTH has a name that is not an HTTP header name: give the name alone (e.g. Authorization or X-Api-Key) and the credential as the value")]
    HeaderName,
    #[error("LOCKFLEET_SMS_WEBHOOK_AUTH has an empty value or one that is not a valid HTTP header value (a line break?): give the credential on one line")]
    HeaderValue,
    #[error("--sms-template has no {{otp}}: the text must carry the code, e.g. \"Your unlock code is {{otp}}\"")]
    TemplateWithoutOtp,
    #[error("--sms-webhook-tries is 0: give 1 or more (1 means no retry)")]
    NoTries,
    #[error("--sms-webhook-timeout-ms is 0: give how long one try may take, e.g. 2000")]
    NoTimeout,
    #[error("the HTTPS client could not be set up ({0}): check the system's CA certificates")]
    Client(String),
}

/// The parts of a [`WebhookConfig`] that [`WebhookConfig::check`] parsed.
struct Checked {
    url: Url,
    auth: Option<(HeaderName, HeaderValue)>,
}

/// Hands OTPs to an SMS provider over HTTP(S). Cheap to share: one
/// connection pool for all sends.
pub struct WebhookNotifier {
    client: Client,
    url: Url,
    auth: Option<(HeaderName, HeaderValue)>,
    template: String,
    timeout: Duration,
    tries: u32,
    backoff: Duration,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("url", &redacted(self.url.as_str()))
            .field("tries", &self.tries)
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// Checks `config` and sets up the client (TLS roots from the system).
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookConfigError> {
        Self::with_client(config, Client::builder())
    }

    /// [`Self::new`] on a client builder that may carry more settings (the
    /// tests' trust root).
    fn with_client(
        config: WebhookConfig,
        client: reqwest::ClientBuilder,
    ) -> Result<Self, WebhookConfigError> {
        let Checked { url, auth } = config.checked()?;
        let client = client
            // A redirect would carry the credential to wherever it points,
            // and a 301/302 turns the POST into a body-less GET.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("lockfleet-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookConfigError::Client(root_cause(e)))?;
        Ok(WebhookNotifier {
            client,
            url,
            auth,
            template: config.template,
            timeout: config.timeout,
            tries: config.tries,
            backoff: config.backoff,
        })
    }

    async fn deliver(&self, msg: &OtpMessage) -> Result<(), NotifyError> {
        let body = request_body(msg, &self.template);
        let mut tries = 0;
        loop {
            tries += 1;
            let failure = match self.try_once(body.clone()).await {
                Ok(status) => {
                    tracing::debug!(
                        challenge_id = msg.challenge_id,
                        try_no = tries,
                        status = status.as_u16(),
                        "sms webhook: delivered"
                    );
                    return Ok(());
                }
                Err(failure) => failure,
            };
            tracing::debug!(
                challenge_id = msg.challenge_id,
                try_no = tries,
                failure = failure.label(),
                status = failure.status(),
                "sms webhook: try failed"
            );
            if !failure.is_transient() || tries >= self.tries {
                return Err(failure.into_error(tries, self.timeout));
            }
            tokio::time::sleep(pause(self.backoff, tries, rand::random())).await;
        }
    }

    /// One `POST`; the answer's body is not read (nothing in it changes
    /// the outcome, and it may echo the number).
    async fn try_once(&self, body: Bytes) -> Result<StatusCode, Failure> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some((name, value)) = &self.auth {
            request = request.header(name.clone(), value.clone());
        }
        match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_elapsed) => Err(Failure::Timeout),
            Ok(Err(e)) if e.is_timeout() => Err(Failure::Timeout),
            Ok(Err(e)) => Err(Failure::Transport(root_cause(e))),
            Ok(Ok(answer)) if answer.status().is_success() => Ok(answer.status()),
            Ok(Ok(answer)) => Err(Failure::Status(answer.status())),
        }
    }
}

impl Notifier for WebhookNotifier {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, msg: &'a OtpMessage) -> NotifyFuture<'a> {
        Box::pin(self.deliver(msg))
    }
}

/// The body every try sends, built once. The copies in the HTTP stack are
/// not wiped; the rendered text is.
fn request_body(msg: &OtpMessage, template: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct SmsRequest<'a> {
        to: &'a str,
        message: &'a str,
        reference: String,
        expires_at_ms: u64,
    }
    let message = msg.render(template);
    let json = serde_json::to_vec(&SmsRequest {
        to: &msg.mobile,
        message: &message,
        reference: format!("2fa-{}", msg.challenge_id),
        expires_at_ms: msg.expires_at_ms,
    })
    // Invariant: strings and an integer always serialize.
    .expect("the SMS request serializes");
    Bytes::from(json)
}

/// The pause after `failed` tries (1, 2, ...): `first`, doubled for each
/// try after the first, plus `jitter` (in [0, 1)) of a fifth of that.
fn pause(first: Duration, failed: u32, jitter: f64) -> Duration {
    let base = first.saturating_mul(2u32.saturating_pow(failed.saturating_sub(1)));
    let extra = (base / JITTER_DIVISOR).mul_f64(jitter.clamp(0.0, 1.0));
    base.saturating_add(extra)
}

/// The innermost cause of a transport error, e.g. "Connection refused (os
/// error 111)" or "invalid peer certificate: UnknownIssuer"; without the
/// URL, which may hold an API key.
fn root_cause(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut cause: &dyn std::error::Error = &e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// Why one try failed.
#[derive(Debug)]
enum Failure {
    Timeout,
    /// Connecting, TLS, or the connection broke before an answer.
    Transport(String),
    Status(StatusCode),
}

impl Failure {
    /// Whether another try may go better.
    fn is_transient(&self) -> bool {
        match self {
            Failure::Timeout | Failure::Transport(_) => true,
            Failure::Status(s) => {
                matches!(
                    *s,
                    StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
                ) || s.is_server_error()
            }
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Transport(_) => "connect",
            Failure::Status(_) => "http_status",
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Failure::Status(s) => Some(s.as_u16()),
            _ => None,
        }
    }

    fn into_error(self, tries: u32, timeout: Duration) -> NotifyError {
        match self {
            Failure::Timeout => NotifyError::Timeout {
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                tries,
            },
            Failure::Transport(detail) => NotifyError::Connect { detail, tries },
            Failure::Status(status) => NotifyError::Status {
                status: status.as_u16(),
                tries,
                hint: hint(status),
            },
        }
    }
}

/// What the operator should look at after the provider answered `status`.
fn hint(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HINT_AUTH,
        StatusCode::NOT_FOUND => HINT_NOT_FOUND,
        s if s.is_redirection() => HINT_REDIRECT,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => HINT_TRANSIENT,
        s if s.is_server_error() => HINT_TRANSIENT,
        _ => HINT_REJECTED,
    }
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
