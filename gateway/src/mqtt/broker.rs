//! The embedded broker (rumqttd), for single-machine deployments.
//!
//! rumqttd's `Broker::start` never returns and only logs a listener that fails
//! to bind, so we check the address ourselves first and run the broker on its
//! own thread. It cannot be stopped: it ends with the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

/// Most simultaneous MQTT connections. rumqttd panics past its limit (upstream
/// #991), so the limit is set well above the bridges and MQTT locks one
/// instance serves; raise it with the config key `mqtt_max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;

/// Largest MQTT payload the broker accepts. Above the device limit
/// (`schemas::device::MAX_UPLINK_BYTES`) so that an oversize report reaches
/// us and gets an explanation on the device's error topic instead of a
/// silent disconnect.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Segment settings per topic filter. The sample config's 100 MiB x 10 grows
/// memory without bound (upstream #957, #732); our messages are small and
/// consumed at once.
const SEGMENT_BYTES: usize = 1024 * 1024;
const SEGMENT_COUNT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}. Is another broker (e.g. Mosquitto) on that port? Choose another with --mqtt-listen, or use that broker with --mqtt-broker")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the embedded MQTT broker thread: {0}")]
    Thread(std::io::Error),
}

/// Start rumqttd listening for MQTT 3.1.1 on `listen` (port 0 picks a free
/// port). Returns the address it listens on.
pub fn start(listen: SocketAddr, max_connections: usize) -> Result<SocketAddr, BrokerError> {
    // Bind first: a clear error now beats rumqttd's log line later. Port 0 is
    // resolved here so the caller (and tests) learn the real port.
    let probe = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let addr = probe.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    drop(probe);

    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: MAX_PAYLOAD_BYTES,
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections,
            max_outgoing_packet_count: 1_000,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    Ok(addr)
}
