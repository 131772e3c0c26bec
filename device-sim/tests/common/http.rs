//! A one-shot HTTP/1.1 client for the tests (hyper's client connection):
//! what the gateway's SMS webhook does, one request per connection.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// `method http://{addr}{path}` with `body` and `headers`: the status and
/// the body as text, or why no answer came (e.g. the connection closed).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `POST http://{addr}{path}` with the JSON `body`.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Result<(u16, String), String> {
    request(addr, "POST", path, body, &[]).await
}

/// The body the gateway's SMS webhook sends.
pub fn sms_body(to: &str, otp: &str, challenge: u64) -> String {
    serde_json::json!({
        "to": to,
        "message": format!("Your iglooworks unlock code is {otp}. It expires in 5 minutes. Never share it."),
        "reference": format!("2fa-{challenge}"),
        "expires_at_ms": 1_764_000_000_000u64,
    })
    .to_string()
}
