//! The CoAP endpoint's I/O: one task reads the UDP socket and settles what it
//! can at once (pings, refusals, retransmissions, OSCORE verification); each
//! accepted report is submitted and answered by its own short task, bounded
//! by a semaphore. The exchange table sits behind a mutex that is never held
//! across an `.await`; it caches the bytes sent, protected ones included, so
//! a retransmission is never protected a second time.

use super::exchange::{ExchangeTable, Verdict, MAX_EXCHANGES};
use super::handler::{self, Action, Reply, Submission};
use super::message::{self, Inbound, ReplyTo};
use super::oscore::{self, OscoreExchange, Unwrapped};
use crate::ingest::{self, Ingest};
use crate::keys::KeyRing;
use crate::metrics;
use crate::twofa::{Gate, TwoFactorEntry};
use bytes::Bytes;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Receive buffer: the largest UDP payload fits, so an oversize request is
/// seen whole and answered 4.13 rather than truncated into a decode error.
pub const RECV_BUFFER_BYTES: usize = 64 * 1024;

/// Requests submitted to the pipeline and not yet answered. Twice the ingest
/// queue (4 096), so the writer's queue stays full while a batch commits;
/// beyond it the endpoint answers 5.03 with Max-Age instead of queueing
/// without bound. Each waiting request costs a small task (~1 KiB).
pub const MAX_IN_FLIGHT: usize = 8_192;

/// How often expired exchanges are dropped and the gauges refreshed. Expiry
/// also runs on every request, so this only matters when traffic stops.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// How long shutdown waits for in-flight reports to be committed and
/// answered. A group commit takes milliseconds; this covers a slow disk
/// without holding a deploy hostage. Locks not answered in time retransmit
/// to whoever serves next, and the store keeps them exactly once.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint's limits. [`Default`] gives the named constants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoapConfig {
    /// See [`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// See [`MAX_EXCHANGES`].
    pub max_exchanges: usize,
    /// See [`DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// `--insecure-dev`: accept unprotected requests to `/hb` and `/log`
    /// (protected ones are still verified). Off by default.
    pub insecure_dev: bool,
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            max_in_flight: MAX_IN_FLIGHT,
            max_exchanges: MAX_EXCHANGES,
            drain_timeout: DRAIN_TIMEOUT,
            insecure_dev: false,
        }
    }
}

/// Serve CoAP on `socket` with the default limits (OSCORE required) until
/// `shutdown` is cancelled; see [`serve_with`].
pub async fn serve(
    socket: UdpSocket,
    ingest: Ingest,
    ring: Arc<KeyRing>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(socket, ingest, ring, shutdown, CoapConfig::default()).await
}

/// Serve CoAP on `socket` until `shutdown` is cancelled: then stop reading,
/// wait up to `config.drain_timeout` for in-flight reports to be answered,
/// and return. Protected requests are verified with the contexts in `ring`
/// (see [`super::oscore`]). An error is returned only when the socket itself
/// fails; bad input from peers is answered and counted, never fatal.
pub async fn serve_with(
    socket: UdpSocket,
    ingest: Ingest,
    ring: Arc<KeyRing>,
    shutdown: CancellationToken,
    config: CoapConfig,
) -> io::Result<()> {
    serve_with_gate(socket, ingest, ring, shutdown, config, None).await
}

/// [`serve_with`], with 2FA entries (`/2fa`, `/otp`) handed to `gate`.
/// Without a gate they are answered 5.01.
pub async fn serve_with_gate(
    socket: UdpSocket,
    ingest: Ingest,
    ring: Arc<KeyRing>,
    shutdown: CancellationToken,
    config: CoapConfig,
    gate: Option<Gate>,
) -> io::Result<()> {
    let endpoint = Arc::new(Endpoint {
        socket,
        ring,
        insecure_dev: config.insecure_dev,
        table: Mutex::new(ExchangeTable::new(config.max_exchanges)),
        // RFC 7252 §4.4: start message ids at a random value.
        next_message_id: AtomicU16::new(RandomState::new().hash_one(Instant::now()) as u16),
    });
    let permits = Arc::new(Semaphore::new(config.max_in_flight));
    let tasks = TaskTracker::new();
    // Cancelled only when draining takes too long.
    let abort = CancellationToken::new();
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut evicted_reported = 0;
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];

    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = housekeeping.tick() => {
                let (len, evicted) = {
                    let mut table = endpoint.table();
                    table.expire(Instant::now());
                    (table.len(), table.evicted())
                };
                metrics::coap_exchanges(len);
                metrics::coap_exchanges_evicted(evicted - evicted_reported);
                evicted_reported = evicted;
                metrics::coap_in_flight(config.max_in_flight - permits.available_permits());
            }
            received = endpoint.socket.recv_from(&mut buf) => {
                let (len, peer) = match received {
                    Ok(r) => r,
                    Err(e) if is_transient(&e) => {
                        tracing::debug!(error = %e, "CoAP receive error, continuing");
                        continue;
                    }
                    Err(e) => break Err(e),
                };
                match endpoint.on_datagram(Instant::now(), peer, &buf[..len]) {
                    Step::Nothing => {}
                    Step::Send(bytes) => endpoint.send(&bytes, peer).await,
                    Step::Submit(job, reply_to, oscore) => match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let work = Work { endpoint: endpoint.clone(), peer, reply_to, oscore, _permit: permit };
                            match *job {
                                Job::Report(submission) => {
                                    tasks.spawn(work.run(ingest.clone(), submission, abort.clone()));
                                }
                                Job::TwoFactor(entry, received) => match &gate {
                                    Some(gate) => {
                                        tasks.spawn(work.run_twofa(gate.clone(), entry, received, abort.clone()));
                                    }
                                    None => {
                                        let reply = handler::twofa_unavailable();
                                        let bytes = endpoint.answer(peer, &work.reply_to, &reply);
                                        endpoint.send(&bytes, peer).await;
                                    }
                                },
                            }
                        }
                        // Unprotected even to a protected request: nothing
                        // was committed, so its nonce must stay unused.
                        Err(_) => {
                            let bytes = endpoint.answer(peer, &reply_to, &handler::busy());
                            endpoint.send(&bytes, peer).await;
                        }
                    },
                }
            }
        }
    };

    tasks.close();
    if tokio::time::timeout(config.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            unanswered = tasks.len(),
            "CoAP shutdown: reports still unanswered after {:?}; the locks will retransmit",
            config.drain_timeout
        );
        abort.cancel();
        tasks.wait().await;
    }
    metrics::coap_in_flight(0);
    result
}

/// Receive errors that concern one datagram or peer, not the socket (an
/// ICMP error from an earlier send surfaces on some systems as a reset).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// What the receive task does with one datagram after the synchronous part.
enum Step {
    Nothing,
    Send(Bytes),
    /// Boxed: a report is far larger than the other variants.
    Submit(Box<Job>, ReplyTo, Option<OscoreExchange>),
}

/// Work for a request task.
enum Job {
    Report(Submission),
    /// A 2FA entry, and when its datagram arrived.
    TwoFactor(TwoFactorEntry, Instant),
}

/// State shared by the receive task and the request tasks.
struct Endpoint {
    socket: UdpSocket,
    ring: Arc<KeyRing>,
    insecure_dev: bool,
    table: Mutex<ExchangeTable>,
    /// Message ids of our NON responses (§4.4).
    next_message_id: AtomicU16,
}

impl Endpoint {
    fn table(&self) -> MutexGuard<'_, ExchangeTable> {
        // A panic while holding the lock cannot leave the table half-updated
        // in a way that matters: at worst one exchange is remembered wrongly.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything about one datagram that needs no `.await`.
    fn on_datagram(&self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Step {
        metrics::received("coap");
        let packet = match message::classify(datagram) {
            Inbound::Request(packet) => packet,
            Inbound::Ping(message_id) => return Step::Send(message::reset(message_id)),
            Inbound::Reject { message_id, reason } => {
                metrics::rejected("coap", reason);
                tracing::debug!(%peer, message_id, reason, "CoAP message rejected with RST");
                return Step::Send(message::reset(message_id));
            }
            Inbound::Ignore(reason) => {
                if let Some(reason) = reason {
                    metrics::rejected("coap", reason);
                    tracing::debug!(%peer, reason, "CoAP message ignored");
                }
                return Step::Nothing;
            }
            Inbound::NotCoap => {
                metrics::rejected("coap", "not_coap");
                tracing::debug!(%peer, len = datagram.len(), "datagram is not CoAP, dropped");
                return Step::Nothing;
            }
        };
        let reply_to = ReplyTo::of(&packet);
        // RFC 7252 §4.5: duplicate detection before any processing.
        let verdict = self
            .table()
            .on_request(now, peer, reply_to.message_id, reply_to.confirmable);
        match verdict {
            Verdict::Replay(bytes) => {
                metrics::coap_retransmission();
                Step::Send(bytes)
            }
            Verdict::InProgress => {
                metrics::coap_duplicate_ignored("in_progress");
                Step::Nothing
            }
            Verdict::Duplicate => {
                metrics::coap_duplicate_ignored("non");
                Step::Nothing
            }
            Verdict::New => {
                // RFC 8613 §8.2: unprotect between deduplication and the handler.
                let (request, oscore) =
                    match oscore::unprotect(&self.ring, packet, self.insecure_dev) {
                        Ok(Unwrapped::Plain(request)) => (request, None),
                        Ok(Unwrapped::Protected(inner, exchange)) => (inner, Some(exchange)),
                        Err(refusal) => return Step::Send(self.answer(peer, &reply_to, &refusal)),
                    };
                match handler::handle_request(&request, ingest::now_ms()) {
                    Action::Reply(reply) => {
                        // A pure function of the verified request: safe to
                        // protect (see `oscore`).
                        let reply = match oscore {
                            Some(exchange) => exchange.protect(&reply),
                            None => reply,
                        };
                        Step::Send(self.answer(peer, &reply_to, &reply))
                    }
                    Action::Submit(submission) => {
                        metrics::decoded("coap", submission.kind.as_str());
                        Step::Submit(Box::new(Job::Report(submission)), reply_to, oscore)
                    }
                    Action::TwoFactor(entry) => {
                        metrics::decoded("coap", entry.kind());
                        Step::Submit(Box::new(Job::TwoFactor(entry, now)), reply_to, oscore)
                    }
                }
            }
        }
    }

    /// Frame `reply`, count a refusal, and remember the bytes for
    /// retransmissions.
    fn answer(&self, peer: SocketAddr, to: &ReplyTo, reply: &Reply) -> Bytes {
        if let Some(reason) = reply.refused {
            metrics::rejected("coap", reason);
            tracing::debug!(%peer, code = ?reply.code, reason, "CoAP request refused");
        }
        let non_message_id = if to.confirmable {
            0
        } else {
            self.next_message_id.fetch_add(1, Ordering::Relaxed)
        };
        let bytes = message::encode_reply(to, reply, non_message_id);
        self.table().complete(peer, to.message_id, bytes.clone());
        bytes
    }

    async fn send(&self, bytes: &[u8], peer: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, peer).await {
            // A peer we cannot reach now will retransmit and get the cached answer.
            tracing::debug!(%peer, error = %e, "CoAP send failed");
        }
    }
}

/// One accepted report: submit, wait for the commit, answer.
struct Work {
    endpoint: Arc<Endpoint>,
    peer: SocketAddr,
    reply_to: ReplyTo,
    /// Set when the request was protected: its answer is protected too.
    oscore: Option<OscoreExchange>,
    /// Held until the answer is sent: the in-flight bound.
    _permit: OwnedSemaphorePermit,
}

impl Work {
    async fn run(mut self, ingest: Ingest, submission: Submission, abort: CancellationToken) {
        let Submission {
            report,
            kind,
            events,
        } = submission;
        let oscore = self.oscore.take();
        let protection = oscore.as_ref().map(OscoreExchange::protection);
        let mut unanswered = Unanswered(Some(&self));
        let result = tokio::select! {
            result = ingest.submit_with(report, protection) => result,
            _ = abort.cancelled() => return,
        };
        match &result {
            Ok(outcome) if handler::is_duplicate(outcome, events) => {
                metrics::duplicate("coap", kind.as_str())
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(peer = %self.peer, error = %e, "CoAP report not stored"),
        }
        let reply = handler::outcome_reply(&result);
        let reply = match (oscore, &result) {
            // Committed: the request's sequence number is in the stored
            // window, so this is the only answer its nonce will ever carry.
            (Some(exchange), Ok(_)) => {
                exchange.accepted();
                exchange.protect(&reply)
            }
            // Refused, failed or shutting down: unprotected (see `oscore`).
            _ => reply,
        };
        let bytes = self.endpoint.answer(self.peer, &self.reply_to, &reply);
        unanswered.0 = None;
        self.endpoint.send(&bytes, self.peer).await;
    }
}

impl Work {
    /// A 2FA entry: the gate commits and decides it (and sends a new OTP),
    /// then the answer goes back as for a report.
    async fn run_twofa(
        mut self,
        gate: Gate,
        entry: TwoFactorEntry,
        received: Instant,
        abort: CancellationToken,
    ) {
        let oscore = self.oscore.take();
        let protection = oscore.as_ref().map(OscoreExchange::protection);
        let mut unanswered = Unanswered(Some(&self));
        let result = tokio::select! {
            result = gate.handle(entry, protection, ingest::now_ms(), received) => result,
            _ = abort.cancelled() => return,
        };
        if let Err(e) = &result {
            tracing::debug!(peer = %self.peer, error = %e, "CoAP 2FA entry not accepted");
        }
        let reply = handler::twofa_reply(&result);
        let reply = match (oscore, &result) {
            // Committed: as for a report, the nonce is used once.
            (Some(exchange), Ok(_)) => {
                exchange.accepted();
                exchange.protect(&reply)
            }
            _ => reply,
        };
        let bytes = self.endpoint.answer(self.peer, &self.reply_to, &reply);
        unanswered.0 = None;
        self.endpoint.send(&bytes, self.peer).await;
    }
}

/// Forgets the exchange if its task ends without an answer (cancelled or
/// panicked), so that a retransmission is handled afresh instead of being
/// ignored as "in progress" for the whole exchange lifetime.
struct Unanswered<'a>(Option<&'a Work>);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(work) = self.0 {
            work.endpoint
                .table()
                .abandon(work.peer, work.reply_to.message_id);
        }
    }
}
