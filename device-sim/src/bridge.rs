//! A bridge: an always-on Wi-Fi hub with one MQTT connection (client id =
//! bridge id) through which it reports for its one or two linked locks. It
//! announces itself on `br/{bridge}/status` (`online` after every ConnAck,
//! `offline` before a clean disconnect, `lost` as its Last Will), hears
//! answers on `br/{bridge}/ack/{lock}/hb|log|jr`, errors on
//! `br/{bridge}/err` and the gateway's commands on `br/{bridge}/cmd`.
//!
//! The linked locks' behaviour is the ordinary [`crate::lock::Lock`], what
//! it does with commands [`crate::bridge_relay`]'s; this module only
//! defines the bridge's connection.

use crate::mqtt_conn::{ConnSpec, KEEP_ALIVE};
use schemas::topic::down;

/// The connection of bridge `bridge`.
pub fn conn_spec(bridge: &str, host: &str, port: u16) -> ConnSpec {
    let base = format!("br/{bridge}");
    ConnSpec {
        client_id: bridge.to_string(),
        host: host.to_string(),
        port,
        keep_alive: KEEP_ALIVE,
        filters: vec![
            format!("{base}/ack/#"),
            down::error(&base),
            down::bridge_command(bridge),
        ],
        status_topic: Some(down::bridge_status(bridge)),
        credentials: None,
        track_pubacks: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt_conn::STATUS_LOST;
    use rumqttc::QoS;

    #[test]
    fn bridge_connection_has_its_last_will_and_filters() {
        let spec = conn_spec("B00001", "127.0.0.1", 1883);
        assert_eq!(spec.client_id, "B00001");
        assert_eq!(
            spec.filters,
            vec!["br/B00001/ack/#", "br/B00001/err", "br/B00001/cmd"]
        );
        assert_eq!(spec.status_topic.as_deref(), Some("br/B00001/status"));
        let opts = spec.options();
        assert!(!opts.clean_session());
        let will = opts.last_will().unwrap();
        assert_eq!(will.topic, "br/B00001/status");
        assert_eq!(&will.message[..], STATUS_LOST.as_bytes());
        assert_eq!(will.qos, QoS::AtLeastOnce);
        assert!(schemas::topic::DeviceTopic::parse(&will.topic).is_ok());
        assert_eq!(
            opts.credentials(),
            None,
            "anonymous until credentials are set"
        );
    }

    #[test]
    fn a_secure_bridge_logs_in_with_its_id_and_derived_password() {
        let secret = crate::fleet::MasterSecret::from_bytes([3; 32]);
        let spec = ConnSpec {
            credentials: Some(crate::security::Credentials::for_device("B00001", &secret)),
            ..conn_spec("B00001", "127.0.0.1", 1883)
        };
        let login = spec.options().credentials().unwrap();
        assert_eq!(login.username, "B00001");
        assert_eq!(login.password, schemas::security::mqtt_password(&[3; 32]));
        assert_eq!(spec.options().client_id(), "B00001");
    }
}
