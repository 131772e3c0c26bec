//! The webhook against a real HTTP server on 127.0.0.1:0 that records every
//! request and answers as each test tells it: a status, never, or by
//! closing the connection.

use super::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const OTP: &str = "482913";
const MOBILE: &str = "+6591234567";
const AUTH_VALUE: &str = "Bearer sk-live-7f3a9c";
/// How long a test waits for a request it expects before failing; a guard
/// against a hang, not a synchronization.
const EXPECT_WITHIN: Duration = Duration::from_secs(10);

fn msg() -> OtpMessage {
    OtpMessage {
        challenge_id: 4242,
        org: "acme".into(),
        user_id: "u1".into(),
        lock_id: "L1".into(),
        mobile: MOBILE.into(),
        otp: Zeroizing::new(OTP.into()),
        expires_at_ms: 1_700_000_300_000,
        ttl_minutes: 5,
    }
}

/// What the provider does with one request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// Answers with this status (and a body that echoes the secrets).
    Status(u16),
    /// Never answers.
    Hang,
    /// Closes the connection without an answer.
    Close,
}

/// One request as the provider saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: serde_json::Value,
}

/// A recording HTTP/1.1 server; stops when dropped.
struct Provider {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

type ServiceError = Box<dyn std::error::Error + Send + Sync>;

impl Provider {
    /// Answers the first requests as `script` says, every later one with
    /// `then`.
    async fn start(script: &[Reply], then: Reply) -> Self {
        Self::start_with(script, then, None).await
    }

    /// [`Provider::start`] behind TLS with a new self-signed certificate for
    /// `localhost`, which it returns.
    async fn start_tls(script: &[Reply], then: Reply) -> (Self, Vec<u8>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("a self-signed certificate");
        let der = cert.cert.der().to_vec();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("a PKCS#8 key");
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(der.clone())], key)
            .expect("the certificate and its key");
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::start_with(script, then, Some(tls)).await, der)
    }

    async fn start_with(
        script: &[Reply],
        then: Reply,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let script: Script = Arc::new(Mutex::new(script.iter().copied().collect()));
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (script, tx) = (script.clone(), tx.clone());
                let service = service_fn(move |req| answer(req, script.clone(), tx.clone(), then));
                let tls = tls.clone();
                tokio::spawn(async move {
                    let http = http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            // The client refused the certificate.
                            Err(_) => Ok(()),
                        },
                    };
                });
            }
        });
        Provider { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/sms", self.addr)
    }

    /// The next `n` requests; then asserts that no other came.
    async fn requests(&mut self, n: usize) -> Vec<Seen> {
        let mut all = Vec::with_capacity(n);
        for i in 0..n {
            let seen = tokio::time::timeout(EXPECT_WITHIN, self.seen.recv())
                .await
                .unwrap_or_else(|_| panic!("request {} of {n} never came", i + 1))
                .expect("the server runs while the test holds it");
            all.push(seen);
        }
        if let Ok(extra) = self.seen.try_recv() {
            panic!("expected {n} requests, got another: {extra:?}");
        }
        all
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Script = Arc<Mutex<VecDeque<Reply>>>;

/// Records `req`, then replies as the script (or `then`) says.
async fn answer(
    req: Request<hyper::body::Incoming>,
    script: Script,
    seen: mpsc::UnboundedSender<Seen>,
    then: Reply,
) -> Result<Response<Full<Bytes>>, ServiceError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let reply = script
        .lock()
        .expect("script lock")
        .pop_front()
        .unwrap_or(then);
    let _ = seen.send(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    match reply {
        Reply::Status(status) => {
            let echo = format!("{{\"error\":\"bad number {MOBILE} for {OTP}\"}}");
            Ok(Response::builder()
                .status(status)
                .header("location", "/elsewhere")
                .body(Full::new(Bytes::from(echo)))?)
        }
        Reply::Hang => std::future::pending().await,
        // hyper closes the connection when the service fails.
        Reply::Close => Err("close the connection".into()),
    }
}

/// A short backoff so that every retry path runs in well under a second;
/// the default timeout, which only a hanging provider waits out.
fn config(url: String) -> WebhookConfig {
    WebhookConfig {
        backoff: Duration::from_millis(10),
        ..WebhookConfig::new(url)
    }
}

fn notifier(config: WebhookConfig) -> WebhookNotifier {
    WebhookNotifier::new(config).expect("a valid config")
}

fn assert_no_secret(text: &str) {
    for secret in [OTP, MOBILE, "91234567", AUTH_VALUE, "sk-live"] {
        assert!(!text.contains(secret), "{secret:?} leaked into {text:?}");
    }
}

#[tokio::test]
async fn delivers_the_specified_json_with_the_auth_header() {
    let mut provider = Provider::start(&[], Reply::Status(202)).await;
    let notifier = notifier(WebhookConfig {
        auth_header: Some(("X-Api-Key".into(), Zeroizing::new(AUTH_VALUE.into()))),
        template: "{lock}: code {otp}, valid {minutes} min".into(),
        ..config(provider.url())
    });

    assert_eq!(notifier.kind(), "webhook");
    assert_eq!(notifier.send(&msg()).await, Ok(()));

    let [seen] = <[Seen; 1]>::try_from(provider.requests(1).await).expect("one request");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v1/sms");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["x-api-key"], AUTH_VALUE);
    assert_eq!(
        seen.body,
        json!({
            "to": MOBILE,
            "message": format!("L1: code {OTP}, valid 5 min"),
            "reference": "2fa-4242",
            "expires_at_ms": 1_700_000_300_000_u64,
        })
    );
}

#[tokio::test]
async fn retries_a_500_then_delivers() {
    let mut provider = Provider::start(&[Reply::Status(500)], Reply::Status(200)).await;
    let notifier = notifier(config(provider.url()));

    assert_eq!(notifier.send(&msg()).await, Ok(()));

    let seen = provider.requests(2).await;
    assert_eq!(seen[0].body, seen[1].body, "a retry sends the same message");
}

#[tokio::test]
async fn retries_a_closed_connection_then_delivers() {
    let mut provider = Provider::start(&[Reply::Close], Reply::Status(200)).await;
    let notifier = notifier(config(provider.url()));

    assert_eq!(notifier.send(&msg()).await, Ok(()));
    provider.requests(2).await;
}

#[tokio::test]
async fn retries_408_and_429() {
    let script = [Reply::Status(408), Reply::Status(429)];
    let mut provider = Provider::start(&script, Reply::Status(204)).await;
    let notifier = notifier(config(provider.url()));

    assert_eq!(notifier.send(&msg()).await, Ok(()));
    provider.requests(3).await;
}

#[tokio::test]
async fn gives_up_on_503_after_exactly_tries() {
    let mut provider = Provider::start(&[], Reply::Status(503)).await;
    let notifier = notifier(WebhookConfig {
        tries: 4,
        ..config(provider.url())
    });

    let err = notifier.send(&msg()).await.expect_err("503 every time");
    assert_eq!(
        err,
        NotifyError::Status {
            status: 503,
            tries: 4,
            hint: HINT_TRANSIENT
        }
    );
    assert_eq!(err.reason(), "http_status");
    provider.requests(4).await;
}

#[tokio::test]
async fn does_not_retry_401_or_403_and_points_at_the_auth_header() {
    for status in [401, 403] {
        let mut provider = Provider::start(&[], Reply::Status(status)).await;
        let notifier = notifier(config(provider.url()));

        let err = notifier.send(&msg()).await.expect_err("refused");
        assert!(
            matches!(err, NotifyError::Status { status: s, tries: 1, .. } if s == status),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("check LOCKFLEET_SMS_WEBHOOK_AUTH"),
            "{err}"
        );
        provider.requests(1).await;
    }
}

#[tokio::test]
async fn does_not_retry_404_and_points_at_the_url() {
    let mut provider = Provider::start(&[], Reply::Status(404)).await;
    let notifier = notifier(config(provider.url()));

    let err = notifier.send(&msg()).await.expect_err("not found");
    assert!(
        matches!(
            err,
            NotifyError::Status {
                status: 404,
                tries: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("check --sms-webhook-url"), "{err}");
    provider.requests(1).await;
}

#[tokio::test]
async fn does_not_retry_other_4xx_and_gives_a_generic_hint() {
    let mut provider = Provider::start(&[], Reply::Status(422)).await;
    let notifier = notifier(config(provider.url()));

    let err = notifier.send(&msg()).await.expect_err("rejected");
    assert_eq!(
        err,
        NotifyError::Status {
            status: 422,
            tries: 1,
            hint: HINT_REJECTED
        }
    );
    provider.requests(1).await;
}

#[tokio::test]
async fn does_not_follow_a_redirect() {
    let mut provider = Provider::start(&[], Reply::Status(302)).await;
    let notifier = notifier(WebhookConfig {
        auth_header: Some(("Authorization".into(), Zeroizing::new(AUTH_VALUE.into()))),
        ..config(provider.url())
    });

    let err = notifier.send(&msg()).await.expect_err("redirected");
    assert_eq!(
        err,
        NotifyError::Status {
            status: 302,
            tries: 1,
            hint: HINT_REDIRECT
        }
    );
    let seen = provider.requests(1).await;
    assert_eq!(seen[0].path, "/v1/sms", "the Location was not followed");
}

#[tokio::test]
async fn a_provider_that_never_answers_times_out_after_tries() {
    let mut provider = Provider::start(&[], Reply::Hang).await;
    let notifier = notifier(WebhookConfig {
        timeout: Duration::from_millis(100),
        backoff: Duration::from_millis(10),
        tries: 3,
        ..WebhookConfig::new(provider.url())
    });

    let err = notifier.send(&msg()).await.expect_err("no answer");
    assert_eq!(
        err,
        NotifyError::Timeout {
            timeout_ms: 100,
            tries: 3
        }
    );
    assert_eq!(err.reason(), "timeout");
    provider.requests(3).await;
}

/// A port that was just free: bound, read and released.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    drop(listener);
    format!("http://{addr}/v1/sms")
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error_after_tries() {
    let notifier = notifier(WebhookConfig {
        tries: 2,
        ..config(closed_port().await)
    });

    let err = notifier.send(&msg()).await.expect_err("nobody listens");
    match &err {
        NotifyError::Connect { detail, tries: 2 } => {
            assert!(detail.to_lowercase().contains("refused"), "{detail}")
        }
        other => panic!("expected Connect after 2 tries, got {other:?}"),
    }
    assert_eq!(err.reason(), "connect");
}

#[tokio::test]
async fn errors_name_neither_the_otp_nor_the_number_nor_the_credential() {
    let auth = Some(("Authorization".into(), Zeroizing::new(AUTH_VALUE.into())));
    let mut errors = Vec::new();
    for (reply, timeout) in [
        (Reply::Status(401), DEFAULT_TIMEOUT),
        (Reply::Status(400), DEFAULT_TIMEOUT),
        (Reply::Status(503), DEFAULT_TIMEOUT),
        (Reply::Hang, Duration::from_millis(50)),
    ] {
        let provider = Provider::start(&[], reply).await;
        let notifier = notifier(WebhookConfig {
            auth_header: auth.clone(),
            timeout,
            tries: 1,
            ..config(provider.url())
        });
        errors.push(notifier.send(&msg()).await.expect_err("fails"));
    }
    // The credential in the URL too: it must not come back in the detail.
    let url = closed_port()
        .await
        .replace("http://", "http://user:sk-live-7f3a9c@");
    let notifier = notifier(WebhookConfig {
        auth_header: auth,
        tries: 1,
        ..config(format!("{url}?key={OTP}"))
    });
    errors.push(notifier.send(&msg()).await.expect_err("nobody listens"));

    assert_eq!(
        errors.iter().map(NotifyError::reason).collect::<Vec<_>>(),
        [
            "http_status",
            "http_status",
            "http_status",
            "timeout",
            "connect"
        ]
    );
    for err in &errors {
        assert_no_secret(&err.to_string());
        assert_no_secret(&format!("{err:?}"));
    }
    assert_no_secret(&format!("{notifier:?}"));
}

/// Collects what the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("log buffer lock")
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn log_lines_name_the_challenge_but_no_secret() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("gateway::twofa=trace")
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    // The test runtime is single-threaded: the default covers every task.
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut provider = Provider::start(&[Reply::Status(500)], Reply::Status(200)).await;
    let notifier = notifier(WebhookConfig {
        auth_header: Some(("Authorization".into(), Zeroizing::new(AUTH_VALUE.into()))),
        ..config(provider.url())
    });
    assert_eq!(notifier.send(&msg()).await, Ok(()));
    provider.requests(2).await;

    let logs =
        String::from_utf8(captured.0.lock().expect("log buffer lock").clone()).expect("utf-8 logs");
    assert!(logs.contains("challenge_id=4242"), "{logs}");
    assert!(
        logs.contains("status=500") && logs.contains("try_no=2"),
        "{logs}"
    );
    assert_no_secret(&logs);
}

#[test]
fn check_accepts_the_defaults() {
    let config = WebhookConfig::new("https://sms.example.com/v1/messages");
    assert_eq!(config.check(), Ok(()));
    assert_eq!(config.template, DEFAULT_TEMPLATE);
    assert_eq!(
        (config.timeout, config.tries, config.backoff),
        (Duration::from_secs(2), 3, Duration::from_millis(200))
    );
    assert_eq!(
        WebhookConfig::new("http://10.0.0.5:8080/sms").check(),
        Ok(())
    );
}

#[test]
fn check_says_what_is_wrong() {
    let base = || WebhookConfig::new("https://sms.example.com/send");
    let with_auth = |name: &str, value: &str| WebhookConfig {
        auth_header: Some((name.into(), Zeroizing::new(value.into()))),
        ..base()
    };
    let cases = [
        (
            WebhookConfig::new("sms.example.com/send"),
            WebhookConfigError::UrlSyntax(url::ParseError::RelativeUrlWithoutBase),
        ),
        (
            WebhookConfig::new("ftp://sms.example.com/send"),
            WebhookConfigError::UrlScheme("ftp".into()),
        ),
        (WebhookConfig::new("https://"), WebhookConfigError::UrlHost),
        (
            with_auth("Authorization: Bearer x", "y"),
            WebhookConfigError::HeaderName,
        ),
        (with_auth("", "y"), WebhookConfigError::HeaderName),
        (
            with_auth("Authorization", "a\r\nb"),
            WebhookConfigError::HeaderValue,
        ),
        (
            with_auth("Authorization", " "),
            WebhookConfigError::HeaderValue,
        ),
        (
            WebhookConfig {
                template: "Your code is {code}".into(),
                ..base()
            },
            WebhookConfigError::TemplateWithoutOtp,
        ),
        (
            WebhookConfig { tries: 0, ..base() },
            WebhookConfigError::NoTries,
        ),
        (
            WebhookConfig {
                timeout: Duration::ZERO,
                ..base()
            },
            WebhookConfigError::NoTimeout,
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(config.check(), Err(expected.clone()), "{config:?}");
        assert_eq!(WebhookNotifier::new(config).err(), Some(expected));
    }
    // Every message names the setting and says what to do.
    let err = WebhookConfigError::UrlSyntax(url::ParseError::RelativeUrlWithoutBase);
    assert!(
        err.to_string().starts_with("--sms-webhook-url ") && err.to_string().contains(": give")
    );
    assert_eq!(
        WebhookConfigError::TemplateWithoutOtp.to_string(),
        "--sms-template has no {otp}: the text must carry the code, e.g. \"Your unlock code is {otp}\""
    );
}

#[test]
fn config_errors_and_debug_hide_the_credential() {
    let config = WebhookConfig {
        auth_header: Some((
            format!("X-Key: {AUTH_VALUE}"),
            Zeroizing::new(AUTH_VALUE.into()),
        )),
        ..WebhookConfig::new(format!(
            "https://u:{OTP}@sms.example.com/send?api_key=sk-live-1"
        ))
    };
    let err = config.check().expect_err("bad header name");
    assert_no_secret(&err.to_string());
    let debug = format!("{config:?}");
    assert!(
        !debug.contains(OTP) && !debug.contains("api_key=sk-live"),
        "{debug}"
    );
    assert!(debug.contains("sms.example.com/send"), "{debug}");

    let config = WebhookConfig {
        auth_header: Some(("Authorization".into(), Zeroizing::new(AUTH_VALUE.into()))),
        ..WebhookConfig::new("https://sms.example.com/send")
    };
    assert_no_secret(&format!("{config:?}"));
}

#[test]
fn pause_doubles_from_the_first_with_at_most_a_fifth_of_jitter() {
    let first = Duration::from_millis(200);
    assert_eq!(pause(first, 1, 0.0), Duration::from_millis(200));
    assert_eq!(pause(first, 2, 0.0), Duration::from_millis(400));
    assert_eq!(pause(first, 3, 0.0), Duration::from_millis(800));
    assert_eq!(pause(first, 3, 0.5), Duration::from_millis(880));
    assert!(pause(first, 1, 0.999_999) < Duration::from_millis(240));
    // Absurd settings saturate instead of panicking.
    assert!(pause(first, 200, 0.9) >= pause(first, 32, 0.0));
    assert_eq!(pause(Duration::MAX / 2, 3, 0.9), Duration::MAX);
}

#[tokio::test]
async fn delivers_over_https_to_a_trusted_certificate() {
    let (mut provider, der) = Provider::start_tls(&[], Reply::Status(200)).await;
    let trust = reqwest::Certificate::from_der(&der).expect("a DER certificate");
    let notifier = WebhookNotifier::with_client(
        WebhookConfig {
            auth_header: Some(("Authorization".into(), Zeroizing::new(AUTH_VALUE.into()))),
            ..config(format!("https://localhost:{}/v1/sms", provider.addr.port()))
        },
        Client::builder().tls_certs_only([trust]),
    )
    .expect("a valid config");

    assert_eq!(notifier.send(&msg()).await, Ok(()));
    let seen = provider.requests(1).await;
    assert_eq!(seen[0].headers["authorization"], AUTH_VALUE);
    assert_eq!(seen[0].body["reference"], "2fa-4242");
}

#[tokio::test]
async fn refuses_a_certificate_the_system_does_not_trust() {
    let (provider, _) = Provider::start_tls(&[], Reply::Status(200)).await;
    let notifier = notifier(WebhookConfig {
        tries: 1,
        ..config(format!("https://localhost:{}/v1/sms", provider.addr.port()))
    });

    let err = notifier.send(&msg()).await.expect_err("self-signed");
    match &err {
        NotifyError::Connect { detail, tries: 1 } => {
            assert!(detail.contains("certificate"), "{detail}")
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}
