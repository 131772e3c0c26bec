//! MQTT: the embedded broker, the gateway's own client session, the device
//! message handler and the dashboard event publisher.
//!
//! The gateway always talks MQTT through a real client session ([`client`]):
//! to the embedded rumqttd broker ([`broker`]) over loopback by default, or to
//! an external broker (`--mqtt-broker`). rumqttd's in-process links can only
//! publish at QoS 0, which would lose events for a dashboard backend whose
//! persistent session is briefly offline; a client session publishes at QoS 1
//! and works the same way against Mosquitto or an MQTT cluster.
//!
//! This module owns topics, MQTT sessions and the broker; it must not touch
//! storage (it calls [`crate::ingest`]) and holds no domain rules.

pub mod broker;
pub mod client;
pub mod commands;
pub mod devices;
pub mod events;
pub mod front;
pub mod protection;
pub mod topology;

pub use client::{MqttClient, MqttClientConfig};
