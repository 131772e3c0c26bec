//! The inbox's HTTP/1.1 server (hyper): one accept loop, one task per
//! connection (at most [`MAX_CONNECTIONS`]), each request read whole
//! (at most [`MAX_BODY_BYTES`]), recorded, then answered as the
//! [`InboxMode`] says. Everything stops when the inbox's token is
//! cancelled.

use super::sms::parse_webhook;
use super::{InboxMode, ReceivedSms, Shared, MAX_BODY_BYTES, MAX_CONNECTIONS, SMS_PATH};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                // Never closed: cannot happen.
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, shared.clone(), stop.clone(), permit));
            }
            Err(e) => {
                tracing::debug!(error = %e, "sms inbox: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    // InboxMode::Drop: the request's handler asks the connection to go.
    let hang_up = Arc::new(Notify::new());
    let service = {
        let hang_up = hang_up.clone();
        service_fn(move |req| handle(req, shared.clone(), hang_up.clone()))
    };
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = conn => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "sms inbox: connection ended with an error");
            }
        }
        // Dropping the connection closes the socket unanswered.
        _ = hang_up.notified() => {}
        _ = stop.cancelled() => {}
    }
}

/// A request as read, and what a working provider would answer.
struct Verdict {
    sms: ReceivedSms,
    status: StatusCode,
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    hang_up: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let verdict = read(req).await;
    let malformed = verdict.sms.malformed.clone();
    let id = shared.record(verdict.sms);
    let (status, body) = match shared.mode() {
        InboxMode::Drop => {
            hang_up.notify_one();
            // The connection is dropped before this answers.
            std::future::pending::<()>().await;
            unreachable!("a pending future never completes")
        }
        InboxMode::Status(code) => {
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = if status.is_success() {
                accepted(id)
            } else {
                error_body("injected failure")
            };
            (status, body)
        }
        InboxMode::Delay(d) => {
            tokio::time::sleep(d).await;
            normal(verdict.status, malformed.as_deref(), id)
        }
        InboxMode::Up => normal(verdict.status, malformed.as_deref(), id),
    };
    // Recorded before the answer leaves, so a client that has it sees it.
    shared.answered(id, status.as_u16());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn normal(status: StatusCode, malformed: Option<&str>, id: u64) -> (StatusCode, String) {
    match malformed {
        Some(reason) => (status, error_body(reason)),
        None => (status, accepted(id)),
    }
}

fn accepted(id: u64) -> String {
    serde_json::json!({"id": format!("sms-{id}"), "status": "accepted"}).to_string()
}

fn error_body(reason: &str) -> String {
    serde_json::json!({ "error": reason }).to_string()
}

/// Reads the whole request and judges it.
async fn read(req: Request<Incoming>) -> Verdict {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_string(), v)
        })
        .collect();
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await;
    let mut sms = ReceivedSms {
        at: Instant::now(),
        method: method.to_string(),
        path: path.clone(),
        headers,
        to: None,
        reference: None,
        expires_at_ms: None,
        message: None,
        otp: None,
        malformed: None,
        status: None,
    };
    let refuse = |mut sms: ReceivedSms, status: StatusCode, reason: String| {
        sms.malformed = Some(reason);
        Verdict { sms, status }
    };
    if path != SMS_PATH {
        return refuse(
            sms,
            StatusCode::NOT_FOUND,
            format!("no such path: POST to {SMS_PATH}"),
        );
    }
    if method != Method::POST {
        let reason = format!("method {method} not allowed: POST");
        return refuse(sms, StatusCode::METHOD_NOT_ALLOWED, reason);
    }
    let body = match body {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let reason = format!("body larger than {MAX_BODY_BYTES} bytes");
            return refuse(sms, StatusCode::PAYLOAD_TOO_LARGE, reason);
        }
        Err(e) => {
            let reason = format!("cannot read the body: {e}");
            return refuse(sms, StatusCode::BAD_REQUEST, reason);
        }
    };
    match parse_webhook(&body) {
        Ok(w) => {
            sms.to = Some(w.to.clone());
            sms.reference = Some(w.reference.clone());
            sms.expires_at_ms = Some(w.expires_at_ms);
            sms.message = Some(w.message.clone());
            sms.otp = Some(w.otp.clone());
            Verdict {
                sms,
                status: StatusCode::OK,
            }
        }
        Err(e) => refuse(sms, StatusCode::BAD_REQUEST, e.to_string()),
    }
}
