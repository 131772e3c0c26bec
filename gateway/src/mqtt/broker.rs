//! The embedded broker (rumqttd), for single-machine deployments.
//!
//! rumqttd's `Broker::start` never returns and only logs a listener that fails
//! to bind, so we check the address ourselves first, run the broker on its
//! own thread, and return only once its listener accepts connections. It
//! cannot be stopped: it ends with the process.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;

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
    #[error("the embedded MQTT broker did not start listening on {addr} within {waited:?}: another process may have taken the port after our check; choose another with --mqtt-listen")]
    NotListening { addr: SocketAddr, waited: Duration },
}

/// How long the broker's thread gets to bind its listener. It binds within
/// milliseconds; this covers a loaded machine without hiding a failure.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between connection attempts while waiting for the listener.
const LISTEN_POLL: Duration = Duration::from_millis(5);

/// Start rumqttd listening for MQTT 3.1.1 on `listen` (port 0 picks a free
/// port). Returns the address it listens on, once it accepts connections.
pub async fn start(listen: SocketAddr, max_connections: usize) -> Result<SocketAddr, BrokerError> {
    start_with_login(listen, max_connections, None, "device").await
}

/// [`start`], requiring every client to log in with `login` (the MQTT
/// front's internal credential) when it is given. `name` labels the
/// broker's metrics (`device`, `backend`).
pub async fn start_with_login(
    listen: SocketAddr,
    max_connections: usize,
    login: Option<&rumqttc::mqttbytes::v4::Login>,
    name: &'static str,
) -> Result<SocketAddr, BrokerError> {
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
        auth: login.map(|l| HashMap::from([(l.username.clone(), l.password.clone())])),
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
        metrics: Some(meter_settings()),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    match (broker.meters(), broker.alerts()) {
        (Ok(meters), Ok(alerts)) => {
            tokio::spawn(export_meters(name, meters));
            tokio::spawn(export_alerts(name, alerts));
        }
        // Only if the router thread is already gone, which `start` would report.
        _ => tracing::warn!("cannot read the embedded broker's meters; its metrics stay at zero"),
    }
    std::thread::Builder::new()
        .name(format!("mqtt-broker-{name}"))
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    wait_listening(addr, login).await?;
    Ok(addr)
}

/// Connect until the broker answers a CONNECT with a CONNACK. A real MQTT
/// exchange, not a bare TCP connect: rumqttd logs a connection closed before
/// its CONNECT as an error.
async fn wait_listening(
    addr: SocketAddr,
    login: Option<&rumqttc::mqttbytes::v4::Login>,
) -> Result<(), BrokerError> {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    let attempts = async {
        while probe(target, login).await.is_err() {
            tokio::time::sleep(LISTEN_POLL).await;
        }
    };
    tokio::time::timeout(LISTEN_TIMEOUT, attempts)
        .await
        .map_err(|_| BrokerError::NotListening {
            addr,
            waited: LISTEN_TIMEOUT,
        })
}

/// Seconds between the router's meter reports. rumqttd sends a report only
/// when publishes happened since the last one, so an idle broker's
/// connection gauge holds its last value.
const METER_PUSH_SECS: u64 = 5;

/// rumqttd's timer thread unwraps both intervals in one `select!`, so both
/// kinds must be configured or it panics.
fn meter_settings() -> HashMap<rumqttd::MetricType, rumqttd::MetricSettings> {
    // MetricSettings has no constructor, only serde; a literal always parses.
    let every: rumqttd::MetricSettings =
        serde_json::from_value(serde_json::json!({ "push_interval": METER_PUSH_SECS }))
            .expect("push_interval is MetricSettings' only field");
    HashMap::from([
        (rumqttd::MetricType::Meters, every.clone()),
        (rumqttd::MetricType::Alerts, every),
    ])
}

/// The router's connection and publish counts, into our metrics.
async fn export_meters(name: &'static str, link: rumqttd::meters::MetersLink) {
    while let Ok(meters) = link.next().await {
        for meter in meters {
            if let rumqttd::Meter::Router(_, r) = meter {
                crate::metrics::mqtt_connections(name, r.total_connections);
                crate::metrics::broker_publishes(
                    name,
                    r.total_publishes as u64,
                    r.failed_publishes as u64,
                );
            }
        }
    }
}

/// The router's alerts: `cursor_jump` means a subscriber fell behind by more
/// than the retained segments and lost messages.
async fn export_alerts(name: &'static str, link: rumqttd::alerts::AlertsLink) {
    crate::metrics::broker_started(name);
    while let Ok(alerts) = link.next().await {
        for alert in alerts {
            // rumqttd does not export the kind's type, only its name.
            let kind = match alert.kind.name().as_str() {
                "cursor_jump" => "cursor_jump",
                "bad_publish" => "bad_publish",
                _ => "other",
            };
            crate::metrics::broker_alert(name, kind);
        }
    }
}

/// MQTT 3.1.1 DISCONNECT (§3.14).
const PROBE_DISCONNECT: &[u8] = &[0xe0, 0x00];

/// One CONNECT, CONNACK (accepted), DISCONNECT exchange, logging in with
/// `login` when the broker requires one.
async fn probe(
    target: SocketAddr,
    login: Option<&rumqttc::mqttbytes::v4::Login>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("lockfleet-probe");
    // rumqttd refuses a keep-alive of 0 (upstream #943).
    connect.keep_alive = 60;
    connect.login = login.cloned();
    let mut frame = bytes::BytesMut::new();
    connect.write(&mut frame).map_err(std::io::Error::other)?;
    let mut stream = tokio::net::TcpStream::connect(target).await?;
    stream.write_all(&frame).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    // CONNACK (§3.2): 0x20, length 2, flags, return code 0 = accepted.
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other(format!(
            "unexpected CONNACK {connack:02x?}"
        )));
    }
    stream.write_all(PROBE_DISCONNECT).await?;
    stream.shutdown().await
}
