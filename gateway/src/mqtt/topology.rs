//! Which brokers run, who listens publicly, and where the gateway's own two
//! sessions (devices', backend's) connect.
//!
//! * Secure (the default), embedded: two rumqttd brokers on loopback, one
//!   for devices and one for the dashboard backend, both requiring an
//!   internal login drawn at random at every start; the MQTT front
//!   ([`super::front`]) is the public listener (`--mqtt-listen`, TLS by
//!   configuration). Devices reach only the device broker, the backend only
//!   the backend broker: no device can subscribe to a dashboard topic, as
//!   no dashboard topic exists on its broker. The gateway relays between
//!   them (device uplinks in, dashboard events out).
//! * `--insecure-dev`, embedded: one broker on `--mqtt-listen`, anonymous,
//!   as before security existed; for local experiments only.
//! * External broker (`--mqtt-broker`): both sessions connect there, with
//!   `--mqtt-broker-username` and the password in the environment. Who may
//!   connect and which topics each client may use is that broker's
//!   configuration (its ACLs); device payloads are still protected end to
//!   end with the device's key, so no client of that broker can forge or
//!   read a device's reports or acks.

use super::broker;
use super::front::auth::{Authenticator, GatewayAccounts};
use super::front::server::{self as front, Routes};
use crate::config::{BrokerLogin, Config, MqttMode};
use crate::keys::KeyRing;
use anyhow::Context;
use rumqttc::mqttbytes::v4::Login;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Most connections the backend broker takes: the gateway's session and the
/// dashboard backend's instances.
pub const BACKEND_MAX_CONNECTIONS: usize = 1_024;

/// Username of the internal login the embedded brokers require. Its
/// password is random per start; only the front and the gateway know it.
pub const INTERNAL_USERNAME: &str = "lockfleet-internal";

/// Where things are, once started.
pub struct Topology {
    /// The address clients connect to (the front, or the only broker).
    pub public: SocketAddr,
    /// The device broker (host, port) the gateway's device session uses.
    pub devices: (String, u16),
    /// The broker (host, port) the gateway's backend session uses.
    pub backend: (String, u16),
    /// The login both sessions use.
    pub login: Option<BrokerLogin>,
    /// Whether the gateway's sessions are on brokers of its own (their client
    /// ids may then carry `:`, which no device id and no backend client id
    /// through the front can).
    embedded_secure: bool,
}

impl Topology {
    /// The client id of the gateway's `role` session. On its own brokers it
    /// is `{client_id}:{role}`, which no client through the front can take
    /// over; on an external broker `{client_id}` for the device session (so
    /// an existing persistent session keeps its queued messages) and
    /// `{client_id}-{role}` otherwise.
    pub fn session_id(&self, client_id: &str, role: &str) -> String {
        match (self.embedded_secure, role) {
            (true, _) => format!("{client_id}:{role}"),
            (false, "devices") => client_id.to_string(),
            (false, _) => format!("{client_id}-{role}"),
        }
    }
}

/// Start the brokers and the front `config` asks for.
pub async fn start(
    config: &Config,
    ring: &Arc<KeyRing>,
    stop: CancellationToken,
) -> anyhow::Result<Topology> {
    match (&config.mqtt, config.insecure_dev) {
        (
            MqttMode::Embedded {
                listen,
                max_connections,
            },
            true,
        ) => {
            let addr = broker::start(*listen, *max_connections).await?;
            tracing::warn!(%addr, "INSECURE: embedded MQTT broker listening without authentication or topic confinement (--insecure-dev)");
            let local = (loopback_host(addr), addr.port());
            Ok(Topology {
                public: addr,
                devices: local.clone(),
                backend: local,
                login: None,
                embedded_secure: false,
            })
        }
        (
            MqttMode::Embedded {
                listen,
                max_connections,
            },
            false,
        ) => {
            let internal = Login::new(
                INTERNAL_USERNAME,
                crate::keys::ServerKey::generate_hex().as_str(),
            );
            let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let device_broker =
                broker::start_with_login(loopback, *max_connections, Some(&internal), "device")
                    .await?;
            let backend_broker = broker::start_with_login(
                loopback,
                BACKEND_MAX_CONNECTIONS,
                Some(&internal),
                "backend",
            )
            .await?;
            let tls = match &config.mqtt_tls {
                Some(files) => Some(super::front::tls::acceptor(&files.cert, &files.key)?),
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| broker::BrokerError::Bind {
                    addr: *listen,
                    source,
                })?;
            let public = listener.local_addr()?;
            let backend_hash = config
                .backend_password_hash()
                .context("the dashboard backend's MQTT login")?;
            let accounts =
                GatewayAccounts::new(ring.clone(), config.backend_username.clone(), backend_hash);
            let routes = Routes {
                devices: device_broker,
                backend: backend_broker,
                internal: internal.clone(),
                max_packet: broker::MAX_PAYLOAD_BYTES + 1024,
                connect_rate: config.mqtt_connect_rate,
            };
            tracing::info!(
                addr = %public,
                tls = tls.is_some(),
                backend_username = %config.backend_username,
                "MQTT listening (MQTT 3.1.1{}): devices log in with their id and key-derived password, the dashboard backend with its own; each is confined to its broker and topics",
                if tls.is_some() { " over TLS" } else { "" }
            );
            tracing::debug!(%device_broker, %backend_broker, "embedded MQTT brokers on loopback");
            let auth = Arc::new(Authenticator::new(Arc::new(accounts)));
            tokio::spawn(front::serve(listener, tls, routes, auth, stop));
            let login = Some(BrokerLogin {
                username: internal.username.clone(),
                password: zeroize::Zeroizing::new(internal.password.clone()),
            });
            Ok(Topology {
                public,
                devices: (device_broker.ip().to_string(), device_broker.port()),
                backend: (backend_broker.ip().to_string(), backend_broker.port()),
                login,
                embedded_secure: true,
            })
        }
        (MqttMode::External { host, port, login }, _) => {
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| format!("cannot resolve the MQTT broker {host}:{port}"))?;
            tracing::info!(broker = %format!("{host}:{port}"), login = login.is_some(), "using an external MQTT broker; who may connect and which topics each client may use is its configuration");
            Ok(Topology {
                public: addr,
                devices: (host.clone(), *port),
                backend: (host.clone(), *port),
                login: login.clone(),
                embedded_secure: false,
            })
        }
    }
}

/// A host to reach `addr` on from this machine.
fn loopback_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    }
}
