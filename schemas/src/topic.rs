//! Every MQTT topic, built and parsed here and nowhere else. The normative list,
//! with direction, QoS and payload, is `spec/asyncapi.yaml`.
//!
//! Device-facing topics are short (NB-IoT modems pay per byte); dashboard
//! topics are versioned and scoped by organisation so a backend can subscribe
//! to one tenant (`events/v1/{org}/#`) or all (`events/v1/#`).

use crate::device::valid_id;

/// Prefix of every dashboard event topic.
pub const EVENTS_PREFIX: &str = "events/v1";
/// Subscription filter for every dashboard event.
pub const EVENTS_FILTER: &str = "events/v1/#";
/// The gateway's subscriptions on the device side.
pub const DEVICE_FILTERS: [&str; 3] = ["lk/+/up/+", "br/+/up/+", "br/+/status"];

/// A topic a device publishes on, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceTopic<'a> {
    /// `lk/{lock}/up/hb`: a heartbeat from an MQTT lock.
    LockHeartbeat { lock: &'a str },
    /// `lk/{lock}/up/log`: an activity-log batch from an MQTT lock.
    LockLog { lock: &'a str },
    /// `lk/{lock}/up/jr`: a job report from an MQTT lock.
    LockJobReport { lock: &'a str },
    /// `br/{bridge}/up/hb`: a heartbeat a bridge relays for a linked lock.
    BridgeHeartbeat { bridge: &'a str },
    /// `br/{bridge}/up/log`: an activity-log batch a bridge relays.
    BridgeLog { bridge: &'a str },
    /// `br/{bridge}/up/jr`: a bridge reports a linked lock's job result.
    BridgeJobReport { bridge: &'a str },
    /// `br/{bridge}/status`: `online` / `offline` (also the bridge's Last Will).
    BridgeStatus { bridge: &'a str },
}

/// Why a device topic is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic {0:?} is not a device topic: publish on lk/{{lock}}/up/hb|log|jr, br/{{bridge}}/up/hb|log|jr or br/{{bridge}}/status")]
pub struct UnknownTopic(pub String);

impl<'a> DeviceTopic<'a> {
    pub fn parse(topic: &'a str) -> Result<Self, UnknownTopic> {
        let parts: Vec<&str> = topic.split('/').collect();
        let t = match parts.as_slice() {
            ["lk", id, "up", "hb"] if valid_id(id) => DeviceTopic::LockHeartbeat { lock: id },
            ["lk", id, "up", "log"] if valid_id(id) => DeviceTopic::LockLog { lock: id },
            ["lk", id, "up", "jr"] if valid_id(id) => DeviceTopic::LockJobReport { lock: id },
            ["br", id, "up", "hb"] if valid_id(id) => DeviceTopic::BridgeHeartbeat { bridge: id },
            ["br", id, "up", "log"] if valid_id(id) => DeviceTopic::BridgeLog { bridge: id },
            ["br", id, "up", "jr"] if valid_id(id) => DeviceTopic::BridgeJobReport { bridge: id },
            ["br", id, "status"] if valid_id(id) => DeviceTopic::BridgeStatus { bridge: id },
            _ => return Err(UnknownTopic(topic.to_string())),
        };
        Ok(t)
    }

    /// Where the answers and errors for this publisher go.
    pub fn reply_base(&self) -> String {
        match self {
            DeviceTopic::LockHeartbeat { lock }
            | DeviceTopic::LockLog { lock }
            | DeviceTopic::LockJobReport { lock } => {
                format!("lk/{lock}")
            }
            DeviceTopic::BridgeHeartbeat { bridge }
            | DeviceTopic::BridgeLog { bridge }
            | DeviceTopic::BridgeJobReport { bridge }
            | DeviceTopic::BridgeStatus { bridge } => {
                format!("br/{bridge}")
            }
        }
    }
}

/// Topics the gateway publishes to devices.
pub mod down {
    /// `lk/{lock}/ack/hb`: the [`crate::Downlink`] answering an MQTT lock's heartbeat.
    pub fn lock_heartbeat_ack(lock: &str) -> String {
        format!("lk/{lock}/ack/hb")
    }
    /// `lk/{lock}/ack/log`: the [`crate::LogAck`] answering an MQTT lock's log batch.
    pub fn lock_log_ack(lock: &str) -> String {
        format!("lk/{lock}/ack/log")
    }
    /// `lk/{lock}/ack/jr`: the [`crate::Downlink`] answering an MQTT lock's job report.
    pub fn lock_job_report_ack(lock: &str) -> String {
        format!("lk/{lock}/ack/jr")
    }
    /// `br/{bridge}/ack/{lock}/hb`: the [`crate::Downlink`] for a bridged lock.
    pub fn bridge_heartbeat_ack(bridge: &str, lock: &str) -> String {
        format!("br/{bridge}/ack/{lock}/hb")
    }
    /// `br/{bridge}/ack/{lock}/log`: the [`crate::LogAck`] for a bridged lock.
    pub fn bridge_log_ack(bridge: &str, lock: &str) -> String {
        format!("br/{bridge}/ack/{lock}/log")
    }
    /// `br/{bridge}/ack/{lock}/jr`: the [`crate::Downlink`] answering a bridge's job report.
    pub fn bridge_job_report_ack(bridge: &str, lock: &str) -> String {
        format!("br/{bridge}/ack/{lock}/jr")
    }
    /// `br/{bridge}/cmd`: a protected [`crate::device::BridgeCommand`] for one of the bridge's locks.
    pub fn bridge_command(bridge: &str) -> String {
        format!("br/{bridge}/cmd")
    }
    /// `{lk|br}/{id}/err`: a JSON [`crate::event::DeviceError`] explaining a refused publish.
    pub fn error(reply_base: &str) -> String {
        format!("{reply_base}/err")
    }
    /// `br/{bridge}/status`.
    pub fn bridge_status(bridge: &str) -> String {
        format!("br/{bridge}/status")
    }
}

/// Topics the gateway publishes to the dashboard backend (JSON, QoS 1).
pub mod events {
    use super::EVENTS_PREFIX;

    pub fn heartbeat(org: &str, lock: &str) -> String {
        format!("{EVENTS_PREFIX}/{org}/lock/{lock}/heartbeat")
    }
    pub fn activity(org: &str, lock: &str) -> String {
        format!("{EVENTS_PREFIX}/{org}/lock/{lock}/activity")
    }
    pub fn state(org: &str, lock: &str) -> String {
        format!("{EVENTS_PREFIX}/{org}/lock/{lock}/state")
    }
    pub fn battery_low(org: &str, lock: &str) -> String {
        format!("{EVENTS_PREFIX}/{org}/lock/{lock}/battery-low")
    }
    pub fn overdue(org: &str, lock: &str) -> String {
        format!("{EVENTS_PREFIX}/{org}/lock/{lock}/overdue")
    }
    pub fn bridge_connectivity(org: &str, bridge: &str) -> String {
        format!("{EVENTS_PREFIX}/{org}/bridge/{bridge}/connectivity")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_device_topic() {
        assert_eq!(
            DeviceTopic::parse("lk/L1/up/hb"),
            Ok(DeviceTopic::LockHeartbeat { lock: "L1" })
        );
        assert_eq!(
            DeviceTopic::parse("lk/L1/up/log"),
            Ok(DeviceTopic::LockLog { lock: "L1" })
        );
        assert_eq!(
            DeviceTopic::parse("br/B1/up/hb"),
            Ok(DeviceTopic::BridgeHeartbeat { bridge: "B1" })
        );
        assert_eq!(
            DeviceTopic::parse("br/B1/up/log"),
            Ok(DeviceTopic::BridgeLog { bridge: "B1" })
        );
        assert_eq!(
            DeviceTopic::parse("br/B1/status"),
            Ok(DeviceTopic::BridgeStatus { bridge: "B1" })
        );
    }

    #[test]
    fn refuses_foreign_and_malformed_topics() {
        for t in [
            "lk/L1/up",
            "lk//up/hb",
            "lk/L1/up/hb/x",
            "events/v1/o/lock/L1/heartbeat",
            "br/B 1/status",
            "",
        ] {
            assert!(DeviceTopic::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn replies_go_to_the_publisher() {
        let t = DeviceTopic::parse("br/B7/up/hb").unwrap();
        assert_eq!(down::error(&t.reply_base()), "br/B7/err");
        assert_eq!(down::bridge_heartbeat_ack("B7", "L2"), "br/B7/ack/L2/hb");
    }
}
