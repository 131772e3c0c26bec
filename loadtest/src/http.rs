//! One-shot HTTP/1.1 GETs to the gateway's `/readyz` and `/metrics` (hyper's
//! client connection, one TCP connection per request: a handful of requests
//! per run, so nothing to pool).

use crate::error::{LoadtestError, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Longest a GET may take. `/metrics` renders in milliseconds; a gateway
/// that takes seconds is stuck, and the caller says so.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET http://{addr}{path}`: the status code and the body as text.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let url = format!("http://{addr}{path}");
    let fail = |detail: String| LoadtestError::Http {
        url: url.clone(),
        detail,
    };
    let request = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| fail(format!("no answer within {REQUEST_TIMEOUT:?}")))?
}
