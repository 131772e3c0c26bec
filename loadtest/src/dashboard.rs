//! The dashboard backend's side of the command API, as a load test needs
//! it: one MQTT session logged in as `dashboard`, commands published on
//! `cmd/v1/{org}` with a `reply_to` under `rsp/v1/`, and their answers read
//! back as JSON. [`Dashboard::run_all`] keeps a window of commands
//! outstanding, for setting up thousands of users before a measurement.

use crate::error::{LoadtestError, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long the session may take to come up (connect and subscribe).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Dashboard::run_all`] waits for the next answer before it
/// declares the outstanding commands lost.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Dashboard::run_all`] prints a progress line.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One command for [`Dashboard::run_all`]: the organisation's topic, the
/// department the request is made in, and the command object.
#[derive(Clone, Debug)]
pub struct Command {
    pub org: String,
    pub department: Option<String>,
    pub command: Value,
}

/// A command request envelope as the dashboard sends it.
pub fn request(
    correlation: &str,
    key: &str,
    org: &str,
    department: Option<&str>,
    command: Value,
) -> Value {
    json!({
        "correlation_id": correlation,
        "idempotency_key": key,
        "reply_to": format!("rsp/v1/{org}/loadtest"),
        "requested_by": "loadtest",
        "department": department,
        "command": command,
    })
}

/// A logged-in dashboard session.
pub struct Dashboard {
    client: AsyncClient,
    answers: mpsc::UnboundedReceiver<Vec<u8>>,
    poller: JoinHandle<()>,
    /// Commands [`Dashboard::run_all`] has sent: numbers their keys.
    sent: u64,
}

impl Dashboard {
    /// Logs in to the gateway's MQTT front at `mqtt` with the backend
    /// `password`, subscribed to every answer; `window` sizes the client's
    /// queues for that many commands in flight.
    pub async fn connect(mqtt: SocketAddr, password: &str, window: usize) -> Result<Dashboard> {
        let client_id = format!("dashboard-loadtest-{}", std::process::id());
        let mut opts = MqttOptions::new(client_id, mqtt.ip().to_string(), mqtt.port());
        opts.set_credentials("dashboard", password);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_inflight(u16::try_from(window.clamp(10, 1000)).unwrap_or(1000));
        let (client, mut eventloop) = AsyncClient::new(opts, window * 2 + 16);
        let (answers_tx, answers) = mpsc::unbounded_channel::<Vec<u8>>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let poller = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut ready_tx = Some(ready_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.subscribe("rsp/v1/#", QoS::AtLeastOnce).await;
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = answers_tx.send(p.payload.to_vec());
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        let up = tokio::time::timeout(CONNECT_TIMEOUT, ready).await;
        if !matches!(up, Ok(Ok(()))) {
            poller.abort();
            return Err(LoadtestError::Fleet(format!(
                "the dashboard session to {mqtt} did not come up within {} s \
                 (wrong backend password, or the gateway's MQTT front is down)",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
        Ok(Dashboard {
            client,
            answers,
            poller,
            sent: 0,
        })
    }

    /// Publishes `body` (a [`request`]) on `cmd/v1/{org}`.
    pub async fn publish(&self, org: &str, body: &Value) -> Result<()> {
        self.client
            .publish(
                format!("cmd/v1/{org}"),
                QoS::AtLeastOnce,
                false,
                body.to_string().into_bytes(),
            )
            .await
            .map_err(|e| LoadtestError::Fleet(format!("publishing a command: {e}")))
    }

    /// The next answer, parsed; `None` if none came within `timeout`.
    /// Payloads that are not JSON are skipped.
    pub async fn answer(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let payload = tokio::time::timeout_at(deadline, self.answers.recv())
                .await
                .ok()??;
            if let Ok(v) = serde_json::from_slice::<Value>(&payload) {
                return Some(v);
            }
        }
    }

    /// Sends every command, at most `window` outstanding, and returns their
    /// answers in the order of `commands`. Fails on the first answer that is
    /// not `ok` (naming the command and the gateway's error), or when
    /// answers stop coming for [`ANSWER_TIMEOUT`]. `what` names the work
    /// in progress lines.
    pub async fn run_all(
        &mut self,
        what: &str,
        commands: &[Command],
        window: usize,
    ) -> Result<Vec<Value>> {
        let run = std::process::id();
        let started = Instant::now();
        let mut last_progress = started;
        let mut answers: Vec<Value> = vec![Value::Null; commands.len()];
        let mut outstanding: HashMap<String, usize> = HashMap::new();
        let mut next = 0;
        let mut done = 0;
        while done < commands.len() {
            while outstanding.len() < window.max(1) && next < commands.len() {
                let c = &commands[next];
                self.sent += 1;
                let corr = format!("setup-{}", self.sent);
                let body = request(
                    &corr,
                    &format!("lt-setup-{run}-{}", self.sent),
                    &c.org,
                    c.department.as_deref(),
                    c.command.clone(),
                );
                self.publish(&c.org, &body).await?;
                outstanding.insert(corr, next);
                next += 1;
            }
            let Some(answer) = self.answer(ANSWER_TIMEOUT).await else {
                return Err(LoadtestError::Fleet(format!(
                    "{what}: {} commands were not answered within {} s",
                    outstanding.len(),
                    ANSWER_TIMEOUT.as_secs()
                )));
            };
            let Some(i) = answer["correlation_id"]
                .as_str()
                .and_then(|c| outstanding.remove(c))
            else {
                continue;
            };
            if answer["status"] != "ok" {
                return Err(LoadtestError::Fleet(format!(
                    "{what}: the gateway refused {}: {}",
                    commands[i].command["type"], answer["error"]
                )));
            }
            answers[i] = answer;
            done += 1;
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                eprintln!(
                    "    {what}: {done}/{} commands answered ({:.0}/s)",
                    commands.len(),
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        Ok(answers)
    }

    /// Ends the session.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        self.poller.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_reply_topic_under_rsp() {
        let r = request(
            "c1",
            "k1",
            "org-1",
            Some("d1"),
            json!({"type": "get_job", "job_id": 1}),
        );
        assert_eq!(r["reply_to"], "rsp/v1/org-1/loadtest");
        assert_eq!(r["department"], "d1");
        assert_eq!(r["command"]["type"], "get_job");
        let r = request("c2", "k2", "o", None, json!({}));
        assert!(r["department"].is_null());
    }
}
