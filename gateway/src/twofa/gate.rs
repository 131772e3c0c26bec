//! The 2FA gate between the CoAP endpoint and the pipeline: it turns what a
//! lock sent into what may be stored (the passcode's Argon2id key, a fresh
//! challenge id and its OTP's keyed tag), submits it to the writer (which
//! checks the OSCORE protection and decides, `store::twofa`), hands a new
//! OTP to the notifier, and builds the lock's answer.
//!
//! The typed digits and the OTP live only here, in zeroized buffers, for the
//! length of one request. The expensive part (Argon2id) runs on the blocking
//! pool through a [`PasscodeHasher`], at most one per core at a time, so a
//! flood of passcode entries cannot starve the runtime.

use super::notifier::{Notifier, OtpMessage};
use crate::ingest::writer::{twofa_outbound, Outbound};
use crate::ingest::{
    Ingest, IngestError, Outcome, Protection, Report, ReportBody, TwoFactorReport,
};
use crate::keys::ServerKey;
use crate::metrics;
use crate::store::twofa::{EntryBody, EntryOutcome};
use crate::store::Store;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use dispatcher::{LockRecord, Registry};
use rand::Rng;
use schemas::event::Transport;
use schemas::twofa::{OtpEntry, PasscodeEntry, TwoFactorAnswer, TwoFactorResult, OTP_DIGITS};
use std::cell::RefCell;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use zeroize::Zeroizing;

/// Argon2id cost of a passcode's key: (memory KiB, passes). The lock sends
/// only the digits, so every entry costs one hash: 2 MiB and one pass is
/// about a millisecond of one core, which keeps 1 000 entries a second
/// within a 2-core machine. The salt is secret (derived from the server
/// key, see [`ServerKey::passcode_salt`]), so without the server key the
/// stored keys cannot be attacked at all. Changing the cost would orphan
/// every stored passcode; it is therefore a constant.
pub const PASSCODE_COST: (u32, u32) = (2048, 1);

/// Bytes of a passcode's key.
pub const PASSCODE_KEY_LEN: usize = 32;

/// How long a lock waits before retrying after the notifier failed.
pub const NOTIFIER_RETRY_SECS: u32 = 30;

/// Challenge ids stay below 2^53 so a JavaScript dashboard reads them exactly.
const CHALLENGE_ID_LIMIT: u64 = 1 << 53;

/// A lock's 2FA request.
#[derive(Clone, Debug)]
pub enum TwoFactorEntry {
    Passcode(PasscodeEntry),
    Otp(OtpEntry),
}

impl TwoFactorEntry {
    pub fn lock_id(&self) -> &str {
        match self {
            TwoFactorEntry::Passcode(e) => &e.lock_id,
            TwoFactorEntry::Otp(e) => &e.lock_id,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TwoFactorEntry::Passcode(_) => "passcode",
            TwoFactorEntry::Otp(_) => "otp",
        }
    }
}

thread_local! {
    /// Argon2id's working memory (2 MiB), kept by each thread that hashes
    /// and wiped after every hash. Allocating it per hash costs page faults
    /// on every call, and glibc keeps what each blocking thread freed in
    /// that thread's arena: a dashboard generating passcodes in bulk once
    /// left the gateway at 1.7 GB resident.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// The passcode's key: Argon2id of the digits under the organisation's salt.
pub fn passcode_key(server_key: &ServerKey, org: &str, digits: &str) -> Vec<u8> {
    let salt = server_key.passcode_salt(org);
    // Infallible: the cost and output length are constants within bounds.
    let params = Params::new(PASSCODE_COST.0, PASSCODE_COST.1, 1, Some(PASSCODE_KEY_LEN))
        .expect("valid Argon2 cost");
    let blocks = params.block_count();
    let mut out = vec![0u8; PASSCODE_KEY_LEN];
    ARGON2_MEMORY.with_borrow_mut(|memory| {
        memory.resize(blocks, Block::default());
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into_with_memory(digits.as_bytes(), &salt, &mut out, &mut memory[..])
            .expect("a 16-byte salt, a 32-byte output and memory for the cost");
        // What the blocks hold is derived from the digits: wiped, pages kept.
        memory.fill(Block::default());
    });
    out
}

/// Argon2id of passcodes on the blocking pool, at most one per core at a
/// time whoever asks: the gate for typed passcodes, the command API for
/// drawn ones. Neither a flood of entries nor a dashboard generating
/// passcodes in bulk can take every thread (or a working area per thread).
/// Cheap to clone; clones share the limit.
#[derive(Clone)]
pub struct PasscodeHasher {
    server_key: ServerKey,
    permits: Arc<Semaphore>,
}

impl PasscodeHasher {
    pub fn new(server_key: ServerKey) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PasscodeHasher {
            server_key,
            permits: Arc::new(Semaphore::new(cores)),
        }
    }

    /// Runs `work` (which hashes with [`passcode_key`]) on the blocking
    /// pool once a core is free; `None` if the task panicked.
    pub async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce(&ServerKey) -> R + Send + 'static,
    ) -> Option<R> {
        // Infallible: the semaphore is never closed.
        let _permit = self.permits.acquire().await.expect("semaphore open");
        let key = self.server_key.clone();
        tokio::task::spawn_blocking(move || work(&key)).await.ok()
    }
}

/// `n` uniformly random decimal digits from the thread's CSPRNG (ChaCha,
/// seeded from the operating system).
pub fn random_digits(n: usize) -> Zeroizing<String> {
    let mut rng = rand::rng();
    let mut s = Zeroizing::new(String::with_capacity(n));
    for _ in 0..n {
        s.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    s
}

/// What the gate needs.
pub struct GateParts {
    pub ingest: Ingest,
    pub registry: Arc<RwLock<Registry>>,
    pub server_key: ServerKey,
    pub notifier: Arc<dyn Notifier>,
    pub hasher: PasscodeHasher,
    pub store: Store,
    pub events: mpsc::Sender<Outbound>,
}

/// The gate. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    parts: Arc<GateParts>,
}

impl Gate {
    pub fn new(parts: GateParts) -> Self {
        Gate {
            parts: Arc::new(parts),
        }
    }

    /// Handle one entry that arrived at `received` (`protection`: what
    /// OSCORE verified). `Ok` once the entry was committed and decided;
    /// the answer says what the lock shows.
    pub async fn handle(
        &self,
        entry: TwoFactorEntry,
        protection: Option<Protection>,
        received_at_ms: u64,
        received: Instant,
    ) -> Result<TwoFactorAnswer, IngestError> {
        let kind = entry.kind();
        let lock = self
            .parts
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .lock(entry.lock_id())
            .cloned();
        let (report, otp) = match entry {
            TwoFactorEntry::Passcode(mut e) => {
                // Moved, not copied: the only copy is wiped on drop.
                let digits = Zeroizing::new(std::mem::take(&mut e.passcode));
                let org = lock.as_ref().map_or("", |l| l.org.as_str()).to_string();
                // An unknown lock is refused by the pipeline; no hash for it.
                let passcode_key = if lock.is_some() {
                    self.hash(org, digits).await?
                } else {
                    Vec::new()
                };
                let challenge_id = rand::rng().random_range(1..CHALLENGE_ID_LIMIT);
                let otp = random_digits(OTP_DIGITS);
                let otp_tag = self.parts.server_key.otp_tag(challenge_id, &otp);
                let body = EntryBody::Passcode {
                    passcode_key,
                    challenge_id,
                    otp_tag,
                };
                (report(&e.lock_id, e.seq, body, received_at_ms), Some(otp))
            }
            TwoFactorEntry::Otp(mut e) => {
                let typed = Zeroizing::new(std::mem::take(&mut e.otp));
                let otp_tag = self.parts.server_key.otp_tag(e.challenge, &typed);
                let body = EntryBody::Otp {
                    challenge_id: e.challenge,
                    otp_tag,
                };
                (report(&e.lock_id, e.seq, body, received_at_ms), None)
            }
        };
        let seq = match &report.body {
            ReportBody::TwoFactor(r) => r.seq,
            _ => 0,
        };
        let outcome = match self.parts.ingest.submit_with(report, protection).await? {
            Outcome::TwoFactor(o) => *o,
            _ => {
                return Err(IngestError::Storage(
                    "internal: the pipeline answered a 2FA entry with another outcome".into(),
                ))
            }
        };
        let mut answer = answer_of(seq, &outcome);
        if let (Some(target), Some(otp), Some(lock), Some(challenge), Some(expires)) = (
            &outcome.notify,
            otp,
            lock,
            outcome.challenge,
            outcome.expires_at_ms,
        ) {
            let msg = OtpMessage {
                challenge_id: challenge,
                org: lock.org.to_string(),
                user_id: target.user_id.clone(),
                lock_id: lock.id.to_string(),
                mobile: target.mobile.clone(),
                otp,
                expires_at_ms: expires,
                ttl_minutes: expires.saturating_sub(received_at_ms).div_ceil(60_000),
            };
            let notifier = &self.parts.notifier;
            let started = Instant::now();
            let sent = notifier.send(&msg).await;
            let took = started.elapsed();
            match sent {
                Ok(()) => {
                    metrics::twofa_notifier(notifier.kind(), took, None);
                    metrics::twofa_challenge(received.elapsed());
                }
                Err(e) => {
                    metrics::twofa_notifier(notifier.kind(), took, Some(e.reason()));
                    tracing::warn!(
                        lock = %lock.id,
                        challenge,
                        notifier = notifier.kind(),
                        error = %e,
                        "the OTP could not be sent; the lock is told to retry"
                    );
                    self.record_notifier_failure(&lock, challenge, e.reason())
                        .await;
                    answer = TwoFactorAnswer::new(seq, TwoFactorResult::NotifierFailed, now_s());
                    answer.retry_after_s = Some(NOTIFIER_RETRY_SECS);
                }
            }
        }
        let reason = if answer.result == TwoFactorResult::NotifierFailed {
            "notifier_failed"
        } else {
            outcome.reason
        };
        metrics::twofa_entry(kind, answer.result.as_str(), reason);
        Ok(answer)
    }

    /// Argon2id of the typed digits (see [`PasscodeHasher`]).
    async fn hash(&self, org: String, digits: Zeroizing<String>) -> Result<Vec<u8>, IngestError> {
        let (hashed, took) = self
            .parts
            .hasher
            .run(move |key| {
                // The hash itself, not the wait for a core.
                let started = Instant::now();
                (passcode_key(key, &org, &digits), started.elapsed())
            })
            .await
            .ok_or_else(|| {
                IngestError::Storage("internal: the passcode hash task failed".into())
            })?;
        metrics::twofa_passcode_hash(took);
        Ok(hashed)
    }

    async fn record_notifier_failure(&self, lock: &LockRecord, challenge: u64, reason: &str) {
        match self
            .parts
            .store
            .twofa_notifier_failed(lock, challenge, reason, crate::ingest::now_ms())
            .await
        {
            Ok(Some(event)) => {
                let _ = self.parts.events.send(twofa_outbound(&event)).await;
            }
            Ok(None) => {}
            // The challenge stays open until it expires; its OTP was never
            // sent, so nothing can use it.
            Err(e) => tracing::warn!(error = %e, challenge, "cannot record a notifier failure"),
        }
    }
}

fn report(lock_id: &str, seq: u32, body: EntryBody, received_at_ms: u64) -> Report {
    Report {
        body: ReportBody::TwoFactor(TwoFactorReport {
            lock_id: lock_id.to_string(),
            seq,
            body,
        }),
        transport: Transport::Coap,
        bridge: None,
        received_at_ms,
    }
}

fn now_s() -> u64 {
    crate::ingest::now_ms() / 1000
}

/// The lock's answer for a decided entry (before the notifier's outcome).
fn answer_of(seq: u32, o: &EntryOutcome) -> TwoFactorAnswer {
    let now_ms = crate::ingest::now_ms();
    let mut a = TwoFactorAnswer::new(seq, o.result, now_ms / 1000);
    a.challenge = match o.result {
        TwoFactorResult::OtpSent => o.challenge,
        _ => None,
    };
    a.expires_at = o.expires_at_ms.map(|ms| ms / 1000);
    a.retry_after_s = o.retry_at_ms.map(|at| {
        let secs = Duration::from_millis(at.saturating_sub(now_ms))
            .as_secs_f64()
            .ceil();
        (secs as u32).max(1)
    });
    a.tries_left = o.tries_left;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_argon2_memory_gives_the_key_fresh_memory_gives_and_is_wiped_after() {
        let k = ServerKey::from_hex(&"33".repeat(32)).unwrap();
        let params =
            Params::new(PASSCODE_COST.0, PASSCODE_COST.1, 1, Some(PASSCODE_KEY_LEN)).unwrap();
        let fresh = |digits: &str| {
            let mut out = vec![0u8; PASSCODE_KEY_LEN];
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
                .hash_password_into(digits.as_bytes(), &k.passcode_salt("acme"), &mut out)
                .unwrap();
            out
        };
        for digits in ["48291637", "00000000", "48291637"] {
            assert_eq!(passcode_key(&k, "acme", digits), fresh(digits), "{digits}");
        }
        ARGON2_MEMORY.with_borrow(|m| {
            assert_eq!(m.len(), params.block_count(), "kept for the next hash");
            assert!(
                m.iter().all(|b| b.as_ref().iter().all(|w| *w == 0)),
                "wiped"
            );
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hasher_runs_at_most_one_hash_per_core_at_a_time() {
        let hasher = PasscodeHasher::new(ServerKey::from_hex(&"44".repeat(32)).unwrap());
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let jobs: Vec<_> = (0..32)
            .map(|i| {
                let (hasher, running, most) = (hasher.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    hasher
                        .run(move |key| {
                            use std::sync::atomic::Ordering::SeqCst;
                            let now = running.fetch_add(1, SeqCst) + 1;
                            most.fetch_max(now, SeqCst);
                            let out = passcode_key(key, "acme", &format!("{i:08}"));
                            running.fetch_sub(1, SeqCst);
                            out
                        })
                        .await
                })
            })
            .collect();
        for j in jobs {
            assert!(j.await.unwrap().is_some());
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let most = most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            most >= 1 && most <= cores,
            "{most} at once on {cores} cores"
        );
    }

    #[test]
    fn passcode_keys_depend_on_digits_org_and_server_key() {
        let k1 = ServerKey::from_hex(&"11".repeat(32)).unwrap();
        let k2 = ServerKey::from_hex(&"22".repeat(32)).unwrap();
        let a = passcode_key(&k1, "acme", "48291637");
        assert_eq!(a.len(), PASSCODE_KEY_LEN);
        assert_eq!(a, passcode_key(&k1, "acme", "48291637"), "deterministic");
        assert_ne!(a, passcode_key(&k1, "acme", "48291638"));
        assert_ne!(a, passcode_key(&k1, "other", "48291637"));
        assert_ne!(a, passcode_key(&k2, "acme", "48291637"));
    }

    #[test]
    fn random_digits_are_digits_and_vary() {
        let a = random_digits(8);
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        let draws: std::collections::HashSet<String> =
            (0..50).map(|_| random_digits(8).to_string()).collect();
        assert!(
            draws.len() > 45,
            "50 draws of 8 digits should rarely repeat"
        );
    }

    #[test]
    fn otp_tags_bind_the_challenge() {
        let k = ServerKey::from_hex(&"11".repeat(32)).unwrap();
        assert_eq!(k.otp_tag(1, "123456"), k.otp_tag(1, "123456"));
        assert_ne!(k.otp_tag(1, "123456"), k.otp_tag(2, "123456"));
        assert_ne!(k.otp_tag(1, "123456"), k.otp_tag(1, "123457"));
    }
}
