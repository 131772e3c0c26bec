//! The one typed configuration, resolved from (highest first) command-line
//! flags, `LOCKFLEET_*` environment variables, a TOML file (`--config`), and
//! the embedded defaults, so `gateway serve` runs with no configuration.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// CoAP's registered port (RFC 7252 §6.1), on every interface: locks come from the network.
pub const DEFAULT_COAP_LISTEN: &str = "0.0.0.0:5683";
/// MQTT's registered port, on every interface.
pub const DEFAULT_MQTT_LISTEN: &str = "0.0.0.0:1883";
/// Metrics and health on loopback only: scrapers run beside the gateway or through a proxy.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9100";
pub const DEFAULT_DATA_DIR: &str = "./data";
/// History kept by default: three months of heartbeats and activity.
pub const DEFAULT_RETENTION_DAYS: u64 = 90;

/// Settings that flags, environment and file can all set.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// UDP address for CoAP [default: 0.0.0.0:5683]
    #[arg(long, env = "LOCKFLEET_COAP_LISTEN")]
    pub coap_listen: Option<SocketAddr>,
    /// TCP address of the embedded MQTT broker [default: 0.0.0.0:1883]
    #[arg(long, env = "LOCKFLEET_MQTT_LISTEN")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Use this external MQTT broker (host:port) instead of the embedded one
    #[arg(long, env = "LOCKFLEET_MQTT_BROKER")]
    pub mqtt_broker: Option<String>,
    /// Shared-subscription group for device topics, for several instances on one broker
    #[arg(long, env = "LOCKFLEET_MQTT_SHARED_GROUP")]
    pub mqtt_shared_group: Option<String>,
    /// MQTT client id of this instance: unique per instance and the same across its restarts, so its persistent session (and what waits in it) is found again [default: lockfleet-gateway-HOSTNAME]
    #[arg(long, env = "LOCKFLEET_MQTT_CLIENT_ID")]
    pub mqtt_client_id: Option<String>,
    /// HTTP address for /metrics, /healthz, /readyz [default: 127.0.0.1:9100]
    #[arg(long, env = "LOCKFLEET_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// sqlite://FILE or postgres://... [default: sqlite://DATA_DIR/lockfleet.db]
    #[arg(long, env = "LOCKFLEET_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory for the default SQLite database [default: ./data]
    #[arg(long, env = "LOCKFLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Days of heartbeat and activity history to keep [default: 90]
    #[arg(long, env = "LOCKFLEET_RETENTION_DAYS")]
    pub retention_days: Option<u64>,
    /// Most reports per group commit [default: 512]
    #[arg(long, env = "LOCKFLEET_COMMIT_MAX_BATCH")]
    pub commit_max_batch: Option<usize>,
    /// Milliseconds a group commit waits for more reports [default: 1]
    #[arg(long, env = "LOCKFLEET_COMMIT_LINGER_MS")]
    pub commit_linger_ms: Option<u64>,
    /// Most MQTT connections the embedded broker accepts [default: 50000]
    #[arg(long, env = "LOCKFLEET_MQTT_MAX_CONNECTIONS")]
    pub mqtt_max_connections: Option<usize>,
    /// File holding the server key (64 hex characters) that wraps device secrets; the key itself may instead be in LOCKFLEET_SERVER_KEY [default with SQLite: DATA_DIR/server.key, created if missing]
    #[arg(long, env = "LOCKFLEET_SERVER_KEY_FILE")]
    pub server_key_file: Option<PathBuf>,
    /// Accept unprotected device traffic and anonymous MQTT clients: for local experiments only, never in production
    #[arg(long, env = "LOCKFLEET_INSECURE_DEV")]
    #[serde(default)]
    pub insecure_dev: bool,
    /// Seconds between checks for newly imported devices [default: 2]
    #[arg(long, env = "LOCKFLEET_REGISTRY_REFRESH_SECS")]
    pub registry_refresh_secs: Option<u64>,
}

impl Settings {
    /// Fill what `self` leaves unset from `other`.
    fn or(self, other: Settings) -> Settings {
        Settings {
            coap_listen: self.coap_listen.or(other.coap_listen),
            mqtt_listen: self.mqtt_listen.or(other.mqtt_listen),
            mqtt_broker: self.mqtt_broker.or(other.mqtt_broker),
            mqtt_shared_group: self.mqtt_shared_group.or(other.mqtt_shared_group),
            mqtt_client_id: self.mqtt_client_id.or(other.mqtt_client_id),
            http_listen: self.http_listen.or(other.http_listen),
            database_url: self.database_url.or(other.database_url),
            data_dir: self.data_dir.or(other.data_dir),
            retention_days: self.retention_days.or(other.retention_days),
            commit_max_batch: self.commit_max_batch.or(other.commit_max_batch),
            commit_linger_ms: self.commit_linger_ms.or(other.commit_linger_ms),
            mqtt_max_connections: self.mqtt_max_connections.or(other.mqtt_max_connections),
            registry_refresh_secs: self.registry_refresh_secs.or(other.registry_refresh_secs),
            server_key_file: self.server_key_file.or(other.server_key_file),
            insecure_dev: self.insecure_dev || other.insecure_dev,
        }
    }
}

/// Longest MQTT client id we accept: brokers must take 23 characters
/// (MQTT 3.1.1 §3.1.3.1); Mosquitto and rumqttd take far more, and a prefix
/// plus a host name needs more than 23.
pub const MAX_CLIENT_ID_LEN: usize = 64;

fn valid_client_id(id: &str) -> bool {
    (1..=MAX_CLIENT_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `lockfleet-gateway-{hostname}`: stable across restarts on one host, so a
/// restarted instance resumes its persistent session on an external broker.
/// Two instances on one host need `mqtt_client_id` set apart.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    let id = format!("lockfleet-gateway-{host}");
    id.chars().take(MAX_CLIENT_ID_LEN).collect()
}

/// Where the MQTT side connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttMode {
    /// Run rumqttd in process on this address.
    Embedded {
        listen: SocketAddr,
        max_connections: usize,
    },
    /// Use a broker someone else runs.
    External { host: String, port: u16 },
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub coap_listen: SocketAddr,
    pub mqtt: MqttMode,
    pub mqtt_shared_group: Option<String>,
    pub mqtt_client_id: String,
    pub http_listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub retention: Duration,
    pub writer: crate::ingest::writer::WriterConfig,
    pub registry_refresh: Duration,
    /// Where the server key comes from (see [`Config::server_key`]).
    pub server_key: ServerKeySource,
    /// Device security off (see [`Settings::insecure_dev`]).
    pub insecure_dev: bool,
}

/// Environment variable that may hold the server key itself.
pub const SERVER_KEY_ENV: &str = "LOCKFLEET_SERVER_KEY";

/// Name of the server key file a single-machine deployment gets in its data
/// directory when no key is configured.
pub const DEFAULT_SERVER_KEY_FILE: &str = "server.key";

/// Where the server key comes from, in order of precedence.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerKeySource {
    /// The key itself, from [`SERVER_KEY_ENV`].
    Env(zeroize::Zeroizing<String>),
    /// A file named by `server_key_file`.
    File(PathBuf),
    /// A SQLite deployment's own key file, created if missing.
    DataDir(PathBuf),
    /// PostgreSQL without a configured key: instances sharing the database
    /// must share the key, so none may be made up.
    Missing,
}

impl std::fmt::Debug for ServerKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerKeySource::Env(_) => write!(f, "Env({SERVER_KEY_ENV})"),
            ServerKeySource::File(p) => write!(f, "File({})", p.display()),
            ServerKeySource::DataDir(p) => write!(f, "DataDir({})", p.display()),
            ServerKeySource::Missing => f.write_str("Missing"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no server key: with PostgreSQL every instance must use the same one. Make one with `gateway keys new-server-key`, keep it in a secret store, and give it to each instance in {SERVER_KEY_ENV} or a file named by --server-key-file")]
    NoServerKey,
    #[error("{0}")]
    ServerKey(#[from] crate::keys::ServerKeyError),
}

impl Config {
    /// The server key, from its source. A SQLite deployment without one gets
    /// a new key file in its data directory (and a warning to back it up).
    pub fn server_key(&self) -> Result<crate::keys::ServerKey, ConfigError> {
        use crate::keys::ServerKey;
        match &self.server_key {
            ServerKeySource::Env(text) => Ok(ServerKey::from_hex(text)?),
            ServerKeySource::File(path) => Ok(ServerKey::read(path)?),
            ServerKeySource::DataDir(path) => {
                let (key, created) = ServerKey::read_or_create(path)?;
                if created {
                    tracing::warn!(path = %path.display(), key_id = key.id(), "created a new server key: every device secret is wrapped under it; back it up (without it no device can be served), or give a managed key in {SERVER_KEY_ENV}");
                }
                Ok(key)
            }
            ServerKeySource::Missing => Err(ConfigError::NoServerKey),
        }
    }

    /// Resolve flags/env (`cli`) over the file named by `config_file` over defaults.
    pub fn resolve(cli: Settings, config_file: Option<&Path>) -> Result<Config, ConfigError> {
        let file = match config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.into(),
                    source,
                })?;
                toml::from_str::<Settings>(&text).map_err(|e| ConfigError::Parse {
                    path: path.into(),
                    message: e.to_string(),
                })?
            }
            None => Settings::default(),
        };
        Self::from_settings(cli.or(file))
    }

    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        // Infallible: the defaults are valid socket addresses.
        let addr = |d: &str| -> SocketAddr { d.parse().expect("default address parses") };
        let data_dir = s
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = s
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("lockfleet.db").display()));
        let mqtt = match s.mqtt_broker {
            Some(b) => {
                let b = b.trim_start_matches("mqtt://").trim_start_matches("tcp://");
                let (host, port) = match b.rsplit_once(':') {
                    Some((h, p)) => (
                        h.to_string(),
                        p.parse::<u16>().map_err(|_| {
                            ConfigError::Invalid(format!(
                                "mqtt_broker {b:?}: port {p:?} is not a number; use host:port"
                            ))
                        })?,
                    ),
                    None => (b.to_string(), 1883),
                };
                if host.is_empty() {
                    return Err(ConfigError::Invalid(
                        "mqtt_broker has no host; use host:port, e.g. 127.0.0.1:1883".into(),
                    ));
                }
                MqttMode::External { host, port }
            }
            None => MqttMode::Embedded {
                listen: s.mqtt_listen.unwrap_or_else(|| addr(DEFAULT_MQTT_LISTEN)),
                max_connections: s
                    .mqtt_max_connections
                    .unwrap_or(crate::mqtt::broker::DEFAULT_MAX_CONNECTIONS),
            },
        };
        let max_batch = s.commit_max_batch.unwrap_or(512);
        if max_batch == 0 {
            return Err(ConfigError::Invalid(
                "commit_max_batch must be at least 1".into(),
            ));
        }
        let retention_days = s.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        if retention_days == 0 {
            return Err(ConfigError::Invalid(
                "retention_days must be at least 1".into(),
            ));
        }
        let server_key = match (
            std::env::var(SERVER_KEY_ENV)
                .ok()
                .filter(|k| !k.trim().is_empty()),
            s.server_key_file,
        ) {
            (Some(key), _) => ServerKeySource::Env(zeroize::Zeroizing::new(key)),
            (None, Some(path)) => ServerKeySource::File(path),
            (None, None) if database_url.starts_with("sqlite:") => {
                ServerKeySource::DataDir(data_dir.join(DEFAULT_SERVER_KEY_FILE))
            }
            (None, None) => ServerKeySource::Missing,
        };
        Ok(Config {
            coap_listen: s.coap_listen.unwrap_or_else(|| addr(DEFAULT_COAP_LISTEN)),
            mqtt,
            mqtt_shared_group: s.mqtt_shared_group,
            mqtt_client_id: match s.mqtt_client_id {
                Some(id) if valid_client_id(&id) => id,
                Some(id) => return Err(ConfigError::Invalid(format!("mqtt_client_id {id:?} must be 1 to {MAX_CLIENT_ID_LEN} characters of A-Z a-z 0-9 - _ ."))),
                None => default_client_id(),
            },
            http_listen: s.http_listen.unwrap_or_else(|| addr(DEFAULT_HTTP_LISTEN)),
            database_url,
            data_dir,
            retention: Duration::from_secs(retention_days * 86_400),
            writer: crate::ingest::writer::WriterConfig {
                max_batch,
                linger: Duration::from_millis(s.commit_linger_ms.unwrap_or(1)),
            },
            registry_refresh: Duration::from_secs(s.registry_refresh_secs.unwrap_or(2).max(1)),
            server_key,
            insecure_dev: s.insecure_dev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_configuration() {
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(c.coap_listen.port(), 5683);
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.database_url, "sqlite://./data/lockfleet.db");
        assert!(matches!(c.mqtt, MqttMode::Embedded { listen, .. } if listen.port() == 1883));
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "coap_listen = \"127.0.0.1:6000\"\nhttp_listen = \"127.0.0.1:9999\"\n",
        )
        .unwrap();
        let cli = Settings {
            coap_listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::resolve(cli, Some(&path)).unwrap();
        assert_eq!(c.coap_listen.port(), 7000);
        assert_eq!(c.http_listen.port(), 9999);
    }

    #[test]
    fn unknown_file_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "coap_listn = \"127.0.0.1:6000\"\n").unwrap();
        let err = Config::resolve(Settings::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("coap_listn"), "{err}");
    }

    #[test]
    fn client_id_defaults_to_a_stable_per_host_id_and_is_validated() {
        let a = Config::from_settings(Settings::default())
            .unwrap()
            .mqtt_client_id;
        let b = Config::from_settings(Settings::default())
            .unwrap()
            .mqtt_client_id;
        assert_eq!(a, b, "the same across restarts");
        assert!(
            a.starts_with("lockfleet-gateway-") && valid_client_id(&a),
            "{a}"
        );
        let s = Settings {
            mqtt_client_id: Some("gw-1".into()),
            ..Default::default()
        };
        assert_eq!(Config::from_settings(s).unwrap().mqtt_client_id, "gw-1");
        for bad in [
            "",
            "has space",
            "x".repeat(MAX_CLIENT_ID_LEN + 1).as_str(),
            "a/b",
        ] {
            let s = Settings {
                mqtt_client_id: Some(bad.into()),
                ..Default::default()
            };
            let err = Config::from_settings(s).unwrap_err().to_string();
            assert!(err.contains("mqtt_client_id"), "{err}");
        }
    }

    #[test]
    fn external_broker_parses_host_and_port() {
        let s = Settings {
            mqtt_broker: Some("mqtt://127.0.0.1:1884".into()),
            ..Default::default()
        };
        assert_eq!(
            Config::from_settings(s).unwrap().mqtt,
            MqttMode::External {
                host: "127.0.0.1".into(),
                port: 1884
            }
        );
        let s = Settings {
            mqtt_broker: Some("broker:x".into()),
            ..Default::default()
        };
        assert!(Config::from_settings(s).is_err());
    }
}
