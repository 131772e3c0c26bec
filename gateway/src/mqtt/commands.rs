//! The dashboard's command API over MQTT: requests on `cmd/v1/{org}`
//! (the gateway's backend session subscribes, shared among instances when
//! a shared group is configured), answers on the request's `reply_to`
//! (under `rsp/v1/`, default `rsp/v1/{org}`), job events on
//! `events/v1/{org}/lock/{lock}/job`.
//!
//! Each command runs in a transaction with its idempotency record
//! (`store::jobs`); on SQLite the commands waiting at the same moment share
//! one transaction, each in a savepoint of its own (`store::CommandQueue`).
//! The answer and the events are published only after it committed. PIN digits are sealed under the server key before the
//! transaction and never leave it in any answer or event.

use super::MqttClient;
use crate::ingest::writer::{job_outbound, twofa_outbound};
use crate::keys::ServerKey;
use crate::metrics;
use crate::store::jobs::{Answer, Prepared};
use crate::store::twofa::NewPasscode;
use crate::store::Store;
use crate::twofa::gate::{passcode_key, random_digits, PasscodeHasher};
use dispatcher::jobs::Refusal;
use dispatcher::Registry;
use rand::RngCore;
use schemas::command::{
    default_reply_topic, Command, CommandRequest, CommandResponse, CommandResult, COMMANDS_PREFIX,
    REPLIES_PREFIX,
};
use schemas::twofa::PASSCODE_DIGITS;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Commands handled at once; more wait in the session's queue. SQLite
/// commits the ones waiting together; PostgreSQL runs them in parallel, per
/// lock in order.
pub const MAX_CONCURRENT_COMMANDS: usize = 64;
/// Passcodes drawn for one generate or reset: the first that no other user
/// of the organisation has is kept.
const PASSCODE_CANDIDATES: usize = 3;
/// Largest command payload we read.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// What the command handler works with.
#[derive(Clone)]
pub struct Commands {
    pub store: Store,
    /// Where commands run: grouped into shared transactions on SQLite.
    pub queue: crate::store::CommandQueue,
    pub registry: Arc<RwLock<Registry>>,
    pub server_key: ServerKey,
    pub client: MqttClient,
    /// Draws passcodes (shared with the 2FA gate: one hash per core at a time).
    pub hasher: PasscodeHasher,
    /// Tells bridge delivery that jobs changed.
    pub bridges: Option<crate::bridges::Signals>,
}

/// Handle commands until `stop` (then finish those in hand).
pub async fn run(
    mut incoming: mpsc::Receiver<super::client::Incoming>,
    commands: Commands,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_COMMANDS));
    loop {
        let msg = tokio::select! {
            m = incoming.recv() => match m { Some(m) => m, None => break },
            _ = stop.cancelled() => break,
        };
        // Infallible: the semaphore is never closed.
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        let commands = commands.clone();
        tokio::spawn(async move {
            commands.handle(&msg.topic, &msg.payload).await;
            drop(permit);
        });
    }
    // Wait for the commands in hand to answer.
    let _ = limit.acquire_many(MAX_CONCURRENT_COMMANDS as u32).await;
}

/// A request that could not be read: said on the org's default reply topic.
fn malformed(org: &str, detail: String) -> (String, CommandResponse) {
    (
        default_reply_topic(org),
        CommandResponse {
            correlation_id: String::new(),
            idempotency_key: String::new(),
            replayed: false,
            status: schemas::command::ResponseStatus::Refused,
            result: None,
            error: Some(schemas::command::CommandError {
                rule: "malformed_request".into(),
                message: format!("the command could not be read: {detail}; see schemas/spec/commands/command-request.schema.json"),
            }),
        },
    )
}

impl Commands {
    async fn handle(&self, topic: &str, payload: &[u8]) {
        let started = Instant::now();
        let Some(org) = topic
            .strip_prefix(COMMANDS_PREFIX)
            .and_then(|t| t.strip_prefix('/'))
            .filter(|o| schemas::device::valid_id(o))
        else {
            metrics::command("unknown", "malformed", started.elapsed());
            tracing::warn!(
                topic,
                "command on a topic that names no organisation; ignored"
            );
            return;
        };
        let request: CommandRequest = match parse(payload) {
            Ok(r) => r,
            Err(detail) => {
                metrics::command("unknown", "malformed", started.elapsed());
                let (reply, response) = malformed(org, detail);
                self.publish_response(reply, &response).await;
                return;
            }
        };
        let kind = request.command.kind();
        let reply_to = match &request.reply_to {
            None => default_reply_topic(org),
            Some(t) if valid_reply_topic(t) => t.clone(),
            Some(t) => {
                let (reply, mut response) = malformed(
                    org,
                    format!(
                        "reply_to {t:?} must be a topic under {REPLIES_PREFIX} without wildcards"
                    ),
                );
                response.correlation_id = request.correlation_id.clone();
                response.idempotency_key = request.idempotency_key.clone();
                metrics::command(kind, "malformed", started.elapsed());
                self.publish_response(reply, &response).await;
                return;
            }
        };
        let prepared = self.prepare(org, &request).await;
        let now_ms = crate::ingest::now_ms();
        let done = match self.queue.run(org, &request, &prepared, now_ms).await {
            Ok(d) => d,
            Err(e) => {
                metrics::command(kind, "failed", started.elapsed());
                tracing::warn!(command = kind, error = %e, "a dashboard command failed in storage; answered with an error, nothing changed");
                let answer = Answer::refused(&Refusal::BadRequest(format!(
                    "storage failed, nothing changed: retry with the same idempotency key ({e})"
                )));
                let mut response = response_of(&request, answer, false);
                if let Some(err) = &mut response.error {
                    err.rule = "storage_unavailable".into();
                }
                self.publish_response(reply_to, &response).await;
                return;
            }
        };
        if let (Some(CommandResult::Link { lock_id, bridge_id }), false) =
            (&done.answer.result, done.replayed)
        {
            // This instance routes by the new link at once; the others
            // reload on the registry version the command bumped.
            let mut registry = self.registry.write().unwrap_or_else(|e| e.into_inner());
            registry.set_bridge(lock_id, bridge_id.as_deref().map(dispatcher::BridgeId::new));
        }
        if let (Some(signals), false) = (&self.bridges, done.events.is_empty()) {
            signals.send(crate::bridges::Signal::Refresh);
        }
        let twofa = done.twofa_events.iter().map(twofa_outbound);
        for o in done
            .events
            .iter()
            .map(|(job, change)| job_outbound(job, *change))
            .chain(twofa)
        {
            match self.client.publish(o.topic, o.payload).await {
                Ok(()) => metrics::published(o.kind),
                Err(_) => metrics::publish_failed(o.kind),
            }
        }
        let outcome = match (&done.answer.error, done.replayed) {
            (_, true) => "replayed",
            (None, false) => "ok",
            (Some(_), false) => {
                if let Some(rule) = done.refused_rule {
                    metrics::command_refused(rule);
                }
                "refused"
            }
        };
        metrics::command(kind, outcome, started.elapsed());
        let mut response = response_of(&request, done.answer, done.replayed);
        fit_page(&mut response);
        self.publish_response(reply_to, &response).await;
    }

    /// Look the lock up and seal a Custom PIN, or draw a new 2FA passcode
    /// (and hash it, on the blocking pool), before the transaction.
    async fn prepare(&self, org: &str, request: &CommandRequest) -> Prepared {
        let lock_id = request.command.lock_id();
        let (lock, bridge) = {
            let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
            let lock = lock_id.and_then(|id| registry.lock(id).cloned());
            let bridge = match &request.command {
                Command::LinkBridge { bridge_id, .. } => registry.bridge(bridge_id).cloned(),
                _ => None,
            };
            (lock, bridge)
        };
        let mut prepared = Prepared {
            lock,
            bridge,
            ..Prepared::default()
        };
        if let (Command::CreateCustomPin { lock_id, pin, .. }, true) = (
            &request.command,
            dispatcher::jobs::valid_pin(match &request.command {
                Command::CreateCustomPin { pin, .. } => pin,
                _ => "",
            }),
        ) {
            let access = new_access_id();
            prepared.pin_sealed = Some(self.server_key.seal_pin(lock_id, &access, pin));
            prepared.access_id = Some(access);
        }
        if request.command.reveals_secret() {
            let org = org.to_string();
            let drawn = self
                .hasher
                .run(move |key| {
                    (0..PASSCODE_CANDIDATES)
                        .map(|_| {
                            let digits = random_digits(PASSCODE_DIGITS);
                            let key = passcode_key(key, &org, &digits);
                            NewPasscode { digits, key }
                        })
                        .collect::<Vec<_>>()
                })
                .await;
            // A failed draw leaves no candidate; the store then refuses.
            prepared.passcodes = drawn.unwrap_or_default();
        }
        prepared
    }

    async fn publish_response(&self, topic: String, response: &CommandResponse) {
        // Infallible: a plain struct of strings, numbers and options.
        let payload = serde_json::to_vec(response).expect("response serialises");
        if self.client.publish(topic, payload).await.is_err() {
            metrics::publish_failed("command_response");
        } else {
            metrics::published("command_response");
        }
    }
}

/// Largest answer we publish: the embedded brokers' payload limit, less
/// room for the topic and headers.
const MAX_ANSWER_BYTES: usize = super::broker::MAX_PAYLOAD_BYTES - 1024;

/// Shorten a job listing until its answer fits one MQTT message; the
/// page's `next_before` then continues after the last job kept.
fn fit_page(response: &mut CommandResponse) {
    loop {
        let len = serde_json::to_vec(response).map_or(0, |v| v.len());
        let Some(CommandResult::Jobs { jobs, next_before }) = &mut response.result else {
            return;
        };
        if len <= MAX_ANSWER_BYTES || jobs.len() <= 1 {
            return;
        }
        let keep = (jobs.len() * MAX_ANSWER_BYTES / len).clamp(1, jobs.len() - 1);
        jobs.truncate(keep);
        *next_before = jobs.last().map(|j| j.job_id);
    }
}

fn parse(payload: &[u8]) -> Result<CommandRequest, String> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(format!(
            "payload is {} bytes, more than {MAX_COMMAND_BYTES}",
            payload.len()
        ));
    }
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

fn valid_reply_topic(t: &str) -> bool {
    t.starts_with(REPLIES_PREFIX)
        && t.len() <= 256
        && t.len() > REPLIES_PREFIX.len()
        && !t.contains(['+', '#', '\0'])
}

fn response_of(request: &CommandRequest, answer: Answer, replayed: bool) -> CommandResponse {
    CommandResponse {
        correlation_id: request.correlation_id.clone(),
        idempotency_key: request.idempotency_key.clone(),
        replayed,
        status: answer.status,
        result: answer.result,
        error: answer.error,
    }
}

/// A new access id for a Custom PIN: `cp-` and 16 random hex digits.
fn new_access_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("cp-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_topics_stay_in_the_reply_namespace() {
        assert!(valid_reply_topic("rsp/v1/acme/dash-1"));
        assert!(!valid_reply_topic("rsp/v1/"));
        assert!(!valid_reply_topic("events/v1/acme/lock/L1/job"));
        assert!(!valid_reply_topic("rsp/v1/acme/#"));
    }

    #[test]
    fn access_ids_are_fresh() {
        let (a, b) = (new_access_id(), new_access_id());
        assert_ne!(a, b);
        assert!(a.starts_with("cp-") && a.len() == 19);
    }
}
