//! The front's I/O: the public listener (TCP, or TLS by configuration), a
//! task per client connection that feeds bytes to its [`Session`] and does
//! the [`Step`]s, and a pump that copies whole frames from the broker back.
//! Connection attempts are rate-limited per source before any TLS or
//! password work; connections are bounded; a client that does not send its
//! CONNECT in time is dropped (slow-loris).

use super::auth::{Accounts, Authenticator};
use super::policy::Identity;
use super::rate::RateLimit;
use super::session::{Refusal, Session, Step};
use crate::metrics;
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Login;
use rumqttc::mqttbytes::{check, Error as CodecError};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections the front holds at once (each: two sockets, two small tasks,
/// a few KiB of buffers). Far above the bridges and MQTT locks one instance
/// serves; beyond it new connections are closed at once.
pub const MAX_CONNECTIONS: usize = 50_000;

/// Time a new connection gets to finish TLS and send its CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames queued towards one client before the broker pump waits: the
/// broker's own outgoing limit does the rest.
const CLIENT_QUEUE: usize = 256;

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// How often forgotten sources are swept from the rate limiter.
const RATE_SWEEP: Duration = Duration::from_secs(60);

/// Where the front forwards each kind of client, and how.
#[derive(Clone)]
pub struct Routes {
    /// The broker device clients are forwarded to.
    pub devices: SocketAddr,
    /// The broker the dashboard backend is forwarded to.
    pub backend: SocketAddr,
    /// The login both brokers require (random per start).
    pub internal: Login,
    /// Largest frame in either direction.
    pub max_packet: usize,
    /// Connection attempts allowed per source.
    pub connect_rate: super::rate::ConnectRate,
}

/// Serve the front on `listener` until `shutdown`.
pub async fn serve<A: Accounts>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    routes: Routes,
    auth: Arc<Authenticator<A>>,
    shutdown: CancellationToken,
) {
    let rate = Arc::new(Mutex::new(RateLimit::from(routes.connect_rate)));
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut sweep = tokio::time::interval(RATE_SWEEP);
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                rate.lock().unwrap_or_else(|e| e.into_inner()).forget_idle(Instant::now());
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::debug!(error = %e, "MQTT front accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let allowed = rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(peer.ip(), Instant::now());
        if !allowed {
            metrics::front_refused("rate_limited");
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::front_refused("too_many_connections");
            continue;
        };
        let (tls, routes, auth, stop) =
            (tls.clone(), routes.clone(), auth.clone(), shutdown.clone());
        tokio::spawn(async move {
            metrics::front_connections(1);
            let _ = socket.set_nodelay(true);
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => connection(stream, peer, routes, auth, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            metrics::front_refused("tls_handshake");
                        }
                        Err(_) => metrics::front_refused("connect_timeout"),
                    }
                }
                None => connection(socket, peer, routes, auth, stop).await,
            }
            metrics::front_connections(-1);
            drop(permit);
        });
    }
}

/// One client connection, until either side closes.
async fn connection<S, A>(
    client: S,
    peer: SocketAddr,
    routes: Routes,
    auth: Arc<Authenticator<A>>,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Accounts,
{
    let (mut client_rx, client_tx) = tokio::io::split(client);
    let (to_client, queue) = mpsc::channel::<Bytes>(CLIENT_QUEUE);
    let writer = tokio::spawn(write_frames(client_tx, queue));
    let mut session = Session::new(routes.internal.clone(), routes.max_packet);
    let mut broker: Option<tokio::io::WriteHalf<TcpStream>> = None;
    let mut pump: Option<tokio::task::JoinHandle<()>> = None;
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut buf = vec![0u8; READ_CHUNK];
    'conn: loop {
        let read = if session.identity().is_none() {
            // Before the CONNECT is through: the whole handshake has a deadline.
            match tokio::time::timeout_at(deadline, client_rx.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    metrics::front_refused("connect_timeout");
                    break;
                }
            }
        } else {
            tokio::select! {
                r = client_rx.read(&mut buf) => r,
                _ = stop.cancelled() => break,
                // The broker closed its side: the client's connection ends too.
                _ = finished(&mut pump) => break,
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut steps = session.on_client_bytes(&buf[..n]);
        while !steps.is_empty() {
            let mut next = Vec::new();
            for step in steps {
                match step {
                    Step::Authenticate(c) => {
                        let started = Instant::now();
                        let identity = auth.check(&c.username, &c.password).await;
                        metrics::front_auth(started.elapsed(), identity.is_some());
                        next.extend(session.on_authenticated(identity));
                    }
                    Step::OpenBroker { identity, connect } => {
                        let addr = match identity {
                            Identity::Device(_) => routes.devices,
                            Identity::Backend => routes.backend,
                        };
                        let Ok(stream) = TcpStream::connect(addr).await else {
                            tracing::warn!(%addr, "the front cannot reach its broker; closing the client");
                            metrics::front_refused("broker_unreachable");
                            break 'conn;
                        };
                        let _ = stream.set_nodelay(true);
                        let (broker_rx, mut broker_tx) = tokio::io::split(stream);
                        if broker_tx.write_all(&connect).await.is_err() {
                            break 'conn;
                        }
                        broker = Some(broker_tx);
                        pump = Some(tokio::spawn(copy_frames(
                            broker_rx,
                            to_client.clone(),
                            routes.max_packet,
                        )));
                        metrics::front_authenticated(match identity {
                            Identity::Device(d) => d.kind(),
                            Identity::Backend => "backend",
                        });
                    }
                    Step::ToBroker(frame) => {
                        let Some(b) = broker.as_mut() else {
                            break 'conn;
                        };
                        if b.write_all(&frame).await.is_err() {
                            break 'conn;
                        }
                    }
                    Step::ToClient(frame) => {
                        if to_client.send(frame).await.is_err() {
                            break 'conn;
                        }
                    }
                    Step::Refused(why) => refused(peer, why),
                    Step::Close(why) => {
                        refused(peer, why);
                        break 'conn;
                    }
                }
            }
            steps = next;
        }
    }
    // Closing the broker side without a DISCONNECT (when the client sent
    // none) makes rumqttd publish the client's Last Will, as it should.
    if let Some(mut b) = broker.take() {
        let _ = b.shutdown().await;
    }
    if let Some(p) = pump.take() {
        // Not polled again once `finished` saw it end: abort is a no-op then.
        p.abort();
    }
    drop(to_client);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// Resolves when the pump (if any) has ended; pending while there is none.
async fn finished(pump: &mut Option<tokio::task::JoinHandle<()>>) {
    match pump {
        Some(handle) => {
            let _ = handle.await;
            // Never poll a finished JoinHandle again.
            *pump = None;
        }
        None => std::future::pending().await,
    }
}

fn refused(peer: SocketAddr, why: Refusal) {
    metrics::front_refused(why.reason());
    tracing::debug!(%peer, reason = why.reason(), "MQTT front refused: {why}");
}

/// Write queued frames to the client until the queue closes.
async fn write_frames<W: AsyncWrite + Unpin>(mut client: W, mut queue: mpsc::Receiver<Bytes>) {
    while let Some(frame) = queue.recv().await {
        if client.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = client.shutdown().await;
}

/// Copy whole frames from the broker to the client's queue, so the front's
/// own answers are never written into the middle of one.
async fn copy_frames<R: AsyncRead + Unpin>(
    mut broker: R,
    to_client: mpsc::Sender<Bytes>,
    max_packet: usize,
) {
    let mut inbox = BytesMut::with_capacity(READ_CHUNK);
    loop {
        loop {
            match check(inbox.iter(), max_packet) {
                Ok(h) => {
                    let frame = inbox.split_to(h.frame_length()).freeze();
                    if to_client.send(frame).await.is_err() {
                        return;
                    }
                }
                Err(CodecError::InsufficientBytes(_)) => break,
                // The broker sent what we cannot frame: end the connection.
                Err(_) => return,
            }
        }
        match broker.read_buf(&mut inbox).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
