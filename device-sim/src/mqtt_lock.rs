//! How a lock reports over MQTT, sans I/O: the topics it publishes on and
//! hears answers on (directly, `lk/{lock}/...`, or through its bridge,
//! `br/{bridge}/...`), the parsing of those answer topics, and the ack
//! timer of the one report it has in flight ([`AckWait`]).
//!
//! MQTT's own QoS 1 acknowledgement only means the broker has the message;
//! a report counts as acknowledged when the gateway's answer (whose `seq`
//! echoes the report's) arrives on the ack topic.

use crate::bridge;
use crate::mqtt_conn::{ConnSpec, KEEP_ALIVE};
use schemas::device::UplinkKind;
use schemas::topic::down;
use std::time::{Duration, Instant};

/// Resends of an unacknowledged report (same seq) before the lock gives up
/// until its next wake, as a CoAP lock does after MAX_RETRANSMIT.
pub const MAX_RESENDS: u32 = 4;

/// Default wait for the gateway's answer before resending. Generous: the
/// answer waits for a group commit.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What ends an MQTT report's exchange, and whether PUBACKs are timed.
///
/// MQTT's own QoS 1 acknowledgement (PUBACK) only says the broker has the
/// message; the gateway's answer on the ack topic says it is stored. A
/// plain broker with nothing behind it (Mosquitto as a load-test baseline)
/// never answers, so under [`MqttAcks::Application`] every report would be
/// resent [`MAX_RESENDS`] times and then wait for the lock's next wake,
/// and with one report in flight per lock the offered rate would collapse:
/// [`MqttAcks::Puback`] is for that case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MqttAcks {
    /// The gateway's answer ends the exchange; PUBACKs are not tracked.
    #[default]
    Application,
    /// The gateway's answer ends the exchange, and each report's first
    /// PUBACK is recorded too ([`crate::run::RunReport::pubacked`]): the
    /// broker's part, comparable with a plain broker's.
    ApplicationAndPuback,
    /// The first PUBACK ends the exchange (and is recorded as the
    /// acknowledgement and as a PUBACK): a resend only follows when no
    /// PUBACK comes within the ack timeout.
    Puback,
}

impl MqttAcks {
    /// Whether connections report their publishes' packet ids and PUBACKs.
    pub fn tracks_pubacks(self) -> bool {
        self != MqttAcks::Application
    }
}

/// Where a lock's reports go and where their answers come back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// An INB1 lock with its own MQTT connection.
    Direct { lock: String },
    /// A Bluetooth lock reported by its bridge.
    Bridged { bridge: String, lock: String },
}

impl Route {
    pub fn lock(&self) -> &str {
        match self {
            Route::Direct { lock } | Route::Bridged { lock, .. } => lock,
        }
    }

    /// `lk/{lock}/up/hb|log|jr` or `br/{bridge}/up/hb|log|jr` (a bridged
    /// lock's job reports answer its bridge's commands).
    pub fn uplink_topic(&self, kind: UplinkKind) -> String {
        let leaf = leaf(kind);
        match self {
            Route::Direct { lock } => format!("lk/{lock}/up/{leaf}"),
            Route::Bridged { bridge, .. } => format!("br/{bridge}/up/{leaf}"),
        }
    }

    /// The topic the answer to a report of `kind` arrives on.
    pub fn ack_topic(&self, kind: UplinkKind) -> String {
        match (self, kind) {
            (Route::Direct { lock }, UplinkKind::Heartbeat) => down::lock_heartbeat_ack(lock),
            (Route::Direct { lock }, UplinkKind::ActivityLog) => down::lock_log_ack(lock),
            (Route::Direct { lock }, UplinkKind::JobReport) => down::lock_job_report_ack(lock),
            (Route::Bridged { bridge, lock }, UplinkKind::Heartbeat) => {
                down::bridge_heartbeat_ack(bridge, lock)
            }
            (Route::Bridged { bridge, lock }, UplinkKind::ActivityLog) => {
                down::bridge_log_ack(bridge, lock)
            }
            (Route::Bridged { bridge, lock }, UplinkKind::JobReport) => {
                down::bridge_job_report_ack(bridge, lock)
            }
        }
    }
}

fn leaf(kind: UplinkKind) -> &'static str {
    match kind {
        UplinkKind::Heartbeat => "hb",
        UplinkKind::ActivityLog => "log",
        UplinkKind::JobReport => "jr",
    }
}

/// The connection of an INB1 lock that speaks MQTT: client id = lock id,
/// subscribed to its acks and its error topic.
pub fn lock_conn_spec(lock: &str, host: &str, port: u16) -> ConnSpec {
    ConnSpec {
        client_id: lock.to_string(),
        host: host.to_string(),
        port,
        keep_alive: KEEP_ALIVE,
        filters: vec![
            format!("lk/{lock}/ack/#"),
            down::error(&format!("lk/{lock}")),
        ],
        status_topic: None,
        credentials: None,
        track_pubacks: false,
    }
}

/// An answer topic, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `lk/{lock}/ack/hb|log|jr` or `br/{bridge}/ack/{lock}/hb|log|jr`.
    Ack { lock: &'a str, kind: UplinkKind },
    /// `lk/{lock}/err` (`lock` set) or `br/{bridge}/err` (`lock` unknown).
    Error { lock: Option<&'a str> },
}

/// Parses a topic a device hears answers on; `None` for anything else.
pub fn parse_reply(topic: &str) -> Option<Reply<'_>> {
    let kind = |leaf: &str| match leaf {
        "hb" => Some(UplinkKind::Heartbeat),
        "log" => Some(UplinkKind::ActivityLog),
        "jr" => Some(UplinkKind::JobReport),
        _ => None,
    };
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["lk", lock, "ack", leaf] => Some(Reply::Ack {
            lock,
            kind: kind(leaf)?,
        }),
        ["lk", lock, "err"] => Some(Reply::Error { lock: Some(lock) }),
        ["br", _bridge, "ack", lock, leaf] => Some(Reply::Ack {
            lock,
            kind: kind(leaf)?,
        }),
        ["br", _bridge, "err"] => Some(Reply::Error { lock: None }),
        _ => None,
    }
}

/// The ack timer of a lock's one report in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckWait {
    pub seq: u32,
    pub deadline: Instant,
    pub resends: u32,
}

/// What to do when an [`AckWait`] expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTimeout {
    /// Publish the same report again; the timer was re-armed.
    Resend,
    /// Stop until the lock's next wake; the report stays queued.
    GiveUp,
}

impl AckWait {
    pub fn new(seq: u32, now: Instant, timeout: Duration) -> Self {
        AckWait {
            seq,
            deadline: now + timeout,
            resends: 0,
        }
    }

    /// The timer fired at `now`.
    pub fn on_timeout(&mut self, now: Instant, timeout: Duration) -> OnTimeout {
        if self.resends >= MAX_RESENDS {
            return OnTimeout::GiveUp;
        }
        self.resends += 1;
        self.deadline = now + timeout;
        OnTimeout::Resend
    }
}

/// A route for a lock of the fleet file, if it reports over MQTT.
pub fn route_for(lock: &crate::fleet::LockSpec) -> Option<Route> {
    use schemas::event::Transport;
    match (lock.transport, &lock.bridge_id) {
        (Transport::Mqtt, _) => Some(Route::Direct {
            lock: lock.id.clone(),
        }),
        (Transport::Bridge, Some(b)) => Some(Route::Bridged {
            bridge: b.clone(),
            lock: lock.id.clone(),
        }),
        _ => None,
    }
}

/// The connection spec for a route's connection owner.
pub fn conn_spec_for(route: &Route, host: &str, port: u16) -> ConnSpec {
    match route {
        Route::Direct { lock } => lock_conn_spec(lock, host, port),
        Route::Bridged { bridge, .. } => bridge::conn_spec(bridge, host, port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_the_contract() {
        let direct = Route::Direct {
            lock: "L000001".into(),
        };
        assert_eq!(
            direct.uplink_topic(UplinkKind::Heartbeat),
            "lk/L000001/up/hb"
        );
        assert_eq!(
            direct.uplink_topic(UplinkKind::ActivityLog),
            "lk/L000001/up/log"
        );
        let bridged = Route::Bridged {
            bridge: "B00001".into(),
            lock: "L000002".into(),
        };
        assert_eq!(
            bridged.uplink_topic(UplinkKind::ActivityLog),
            "br/B00001/up/log"
        );
        assert_eq!(
            direct.uplink_topic(UplinkKind::JobReport),
            "lk/L000001/up/jr"
        );
        assert_eq!(direct.ack_topic(UplinkKind::JobReport), "lk/L000001/ack/jr");
        assert!(schemas::topic::DeviceTopic::parse("lk/L000001/up/jr").is_ok());
        assert_eq!(
            bridged.uplink_topic(UplinkKind::JobReport),
            "br/B00001/up/jr"
        );
        assert_eq!(
            bridged.ack_topic(UplinkKind::JobReport),
            "br/B00001/ack/L000002/jr"
        );
        // The gateway's topic parser accepts what we publish.
        for route in [&direct, &bridged] {
            for kind in [
                UplinkKind::Heartbeat,
                UplinkKind::ActivityLog,
                UplinkKind::JobReport,
            ] {
                let t = route.uplink_topic(kind);
                assert!(schemas::topic::DeviceTopic::parse(&t).is_ok(), "{t}");
            }
        }
    }

    #[test]
    fn every_answer_topic_parses_back_to_its_lock_and_kind() {
        let routes = [
            Route::Direct { lock: "L1".into() },
            Route::Bridged {
                bridge: "B1".into(),
                lock: "L2".into(),
            },
        ];
        for route in &routes {
            for kind in [
                UplinkKind::Heartbeat,
                UplinkKind::ActivityLog,
                UplinkKind::JobReport,
            ] {
                let t = route.ack_topic(kind);
                assert_eq!(
                    parse_reply(&t),
                    Some(Reply::Ack {
                        lock: route.lock(),
                        kind
                    }),
                    "{t}"
                );
            }
        }
        assert_eq!(
            parse_reply("lk/L1/err"),
            Some(Reply::Error { lock: Some("L1") })
        );
        assert_eq!(parse_reply("br/B1/err"), Some(Reply::Error { lock: None }));
        assert_eq!(
            parse_reply("lk/L1/ack/jr"),
            Some(Reply::Ack {
                lock: "L1",
                kind: UplinkKind::JobReport
            })
        );
        assert_eq!(parse_reply("br/B1/cmd"), None, "not an answer");
        assert_eq!(parse_reply("lk/L1/ack/x"), None);
        assert_eq!(parse_reply("br/B1/status"), None);
    }

    #[test]
    fn lock_connections_subscribe_to_acks_and_errors() {
        let spec = lock_conn_spec("L7", "127.0.0.1", 1883);
        assert_eq!(spec.client_id, "L7");
        assert_eq!(spec.filters, vec!["lk/L7/ack/#", "lk/L7/err"]);
        assert_eq!(spec.keep_alive, Duration::from_secs(30));
        assert!(!spec.options().clean_session());
        assert!(spec.options().last_will().is_none());
    }

    #[test]
    fn ack_wait_resends_then_gives_up() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(5);
        let mut w = AckWait::new(3, t0, timeout);
        let mut now = t0;
        for i in 1..=MAX_RESENDS {
            now = w.deadline;
            assert_eq!(w.on_timeout(now, timeout), OnTimeout::Resend);
            assert_eq!(w.resends, i);
            assert_eq!(w.seq, 3, "same seq");
        }
        assert_eq!(w.deadline, now + timeout);
        assert_eq!(w.on_timeout(w.deadline, timeout), OnTimeout::GiveUp);
    }
}
