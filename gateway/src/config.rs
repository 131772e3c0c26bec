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
    /// Seconds a lock may be late for its due heartbeat before it is reported overdue [default: 600]
    #[arg(long, env = "LOCKFLEET_OVERDUE_GRACE_SECS")]
    pub overdue_grace_secs: Option<u64>,
    /// Bytes of jobs one heartbeat answer may carry (NB-IoT downlink budget); jobs beyond it wait, with the "more" flag set [default: 512]
    #[arg(long, env = "LOCKFLEET_DOWNLINK_BUDGET")]
    pub downlink_budget: Option<usize>,
    /// Milliseconds a bridge has to report a command's result before it is sent again [default: 10000]
    #[arg(long, env = "LOCKFLEET_BRIDGE_TIMEOUT_MS")]
    pub bridge_timeout_ms: Option<u64>,
    /// Sends of one bridge command while the bridge stays online before it is given up (the job stays pending) [default: 3]
    #[arg(long, env = "LOCKFLEET_BRIDGE_MAX_TRIES")]
    pub bridge_max_tries: Option<u8>,
    /// Seconds a lock, unlock or sync may wait for its bridge's result before it fails; it is never sent later [default: 60]
    #[arg(long, env = "LOCKFLEET_BRIDGE_ACTION_TTL_SECS")]
    pub bridge_action_ttl_secs: Option<u64>,
    /// Most MQTT connections the embedded broker accepts [default: 50000]
    #[arg(long, env = "LOCKFLEET_MQTT_MAX_CONNECTIONS")]
    pub mqtt_max_connections: Option<usize>,
    /// MQTT connection attempts per second one source address may make (a
    /// site of bridges behind one NAT, or a load generator on one host); five
    /// seconds' worth may come at once [default: 10, 50 at once]
    #[arg(long, env = "LOCKFLEET_MQTT_CONNECTS_PER_SECOND")]
    pub mqtt_connects_per_second: Option<f64>,
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
    /// The MQTT username of the dashboard backend (embedded broker) [default: dashboard]
    #[arg(long, env = "LOCKFLEET_BACKEND_USERNAME")]
    pub backend_username: Option<String>,
    /// The dashboard backend's MQTT password as an Argon2id PHC string
    /// (`gateway keys hash-password` makes one); or give the password itself
    /// in the environment variable LOCKFLEET_BACKEND_PASSWORD
    #[arg(long, env = "LOCKFLEET_BACKEND_PASSWORD_HASH", hide_env_values = true)]
    pub backend_password_hash: Option<String>,
    /// PEM certificate chain for the public MQTT listener: with
    /// --mqtt-tls-key it speaks MQTT over TLS (rustls) only
    #[arg(long, env = "LOCKFLEET_MQTT_TLS_CERT")]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --mqtt-tls-cert
    #[arg(long, env = "LOCKFLEET_MQTT_TLS_KEY")]
    pub mqtt_tls_key: Option<PathBuf>,
    /// The username the gateway logs in to an external broker with (its
    /// password in the environment variable LOCKFLEET_MQTT_BROKER_PASSWORD)
    #[arg(long, env = "LOCKFLEET_MQTT_BROKER_USERNAME")]
    pub mqtt_broker_username: Option<String>,
    /// Who sends 2FA OTPs: `mqtt` (the dashboard backend, on notify/v1/{org}/sms) or `webhook` (an SMS provider's HTTP API, --sms-webhook-url) [default: mqtt]
    #[arg(long, env = "LOCKFLEET_NOTIFIER")]
    pub notifier: Option<String>,
    /// The SMS provider's endpoint for --notifier webhook (http or https); its
    /// auth header goes in the environment variable LOCKFLEET_SMS_WEBHOOK_AUTH
    /// as `Name: value`
    #[arg(long, env = "LOCKFLEET_SMS_WEBHOOK_URL")]
    pub sms_webhook_url: Option<String>,
    /// The OTP text; {otp}, {minutes} and {lock} are filled in [default: "Your iglooworks unlock code is {otp}. It expires in {minutes} minutes. Never share it."]
    #[arg(long, env = "LOCKFLEET_SMS_TEMPLATE")]
    pub sms_template: Option<String>,
    /// Milliseconds one webhook try may take [default: 2000]
    #[arg(long, env = "LOCKFLEET_SMS_WEBHOOK_TIMEOUT_MS")]
    pub sms_webhook_timeout_ms: Option<u64>,
    /// Webhook tries per OTP (with backoff) before the lock is told it failed [default: 3]
    #[arg(long, env = "LOCKFLEET_SMS_WEBHOOK_TRIES")]
    pub sms_webhook_tries: Option<u32>,
    /// Seconds a 2FA OTP works [default: 300]
    #[arg(long, env = "LOCKFLEET_OTP_TTL_SECS")]
    pub otp_ttl_secs: Option<u64>,
    /// Wrong OTPs that end a challenge [default: 3]
    #[arg(long, env = "LOCKFLEET_OTP_MAX_TRIES")]
    pub otp_max_tries: Option<u8>,
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
            downlink_budget: self.downlink_budget.or(other.downlink_budget),
            overdue_grace_secs: self.overdue_grace_secs.or(other.overdue_grace_secs),
            bridge_timeout_ms: self.bridge_timeout_ms.or(other.bridge_timeout_ms),
            bridge_max_tries: self.bridge_max_tries.or(other.bridge_max_tries),
            bridge_action_ttl_secs: self.bridge_action_ttl_secs.or(other.bridge_action_ttl_secs),
            mqtt_max_connections: self.mqtt_max_connections.or(other.mqtt_max_connections),
            mqtt_connects_per_second: self
                .mqtt_connects_per_second
                .or(other.mqtt_connects_per_second),
            registry_refresh_secs: self.registry_refresh_secs.or(other.registry_refresh_secs),
            server_key_file: self.server_key_file.or(other.server_key_file),
            insecure_dev: self.insecure_dev || other.insecure_dev,
            backend_username: self.backend_username.or(other.backend_username),
            backend_password_hash: self.backend_password_hash.or(other.backend_password_hash),
            mqtt_tls_cert: self.mqtt_tls_cert.or(other.mqtt_tls_cert),
            mqtt_tls_key: self.mqtt_tls_key.or(other.mqtt_tls_key),
            mqtt_broker_username: self.mqtt_broker_username.or(other.mqtt_broker_username),
            notifier: self.notifier.or(other.notifier),
            sms_webhook_url: self.sms_webhook_url.or(other.sms_webhook_url),
            sms_template: self.sms_template.or(other.sms_template),
            sms_webhook_timeout_ms: self.sms_webhook_timeout_ms.or(other.sms_webhook_timeout_ms),
            sms_webhook_tries: self.sms_webhook_tries.or(other.sms_webhook_tries),
            otp_ttl_secs: self.otp_ttl_secs.or(other.otp_ttl_secs),
            otp_max_tries: self.otp_max_tries.or(other.otp_max_tries),
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
    External {
        host: String,
        port: u16,
        /// The gateway's own login at that broker, if it requires one.
        login: Option<BrokerLogin>,
    },
}

/// A username and password the gateway logs in to a broker with.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerLogin {
    pub username: String,
    pub password: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for BrokerLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BrokerLogin({}, password: ..)", self.username)
    }
}

/// Environment variable holding the gateway's password at an external broker.
pub const BROKER_PASSWORD_ENV: &str = "LOCKFLEET_MQTT_BROKER_PASSWORD";
/// Environment variable holding the dashboard backend's plain password.
pub const BACKEND_PASSWORD_ENV: &str = "LOCKFLEET_BACKEND_PASSWORD";
/// The dashboard backend's username unless configured.
pub const DEFAULT_BACKEND_USERNAME: &str = "dashboard";
/// The file under the data directory holding a generated backend password.
pub const DEFAULT_BACKEND_PASSWORD_FILE: &str = "backend.password";

/// Where the dashboard backend's MQTT password comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum BackendPassword {
    /// The plain password (LOCKFLEET_BACKEND_PASSWORD), hashed at start.
    Env(zeroize::Zeroizing<String>),
    /// An Argon2id PHC string.
    Hash(String),
    /// A password generated on first start into this file (0600), for a
    /// single-machine SQLite deployment.
    DataDir(PathBuf),
    /// None given, and none may be generated (PostgreSQL: several instances
    /// must agree).
    Missing,
}

impl std::fmt::Debug for BackendPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendPassword::Env(_) => write!(f, "Env({BACKEND_PASSWORD_ENV})"),
            BackendPassword::Hash(_) => f.write_str("Hash(..)"),
            BackendPassword::DataDir(p) => write!(f, "DataDir({})", p.display()),
            BackendPassword::Missing => f.write_str("Missing"),
        }
    }
}

/// PEM files of the public MQTT listener's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
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
    /// How late a lock may be for its due heartbeat before it is overdue.
    pub overdue_grace: Duration,
    /// Delivery through bridges.
    pub bridges: crate::bridges::BridgeConfig,
    /// Where the server key comes from (see [`Config::server_key`]).
    pub server_key: ServerKeySource,
    /// Device security off (see [`Settings::insecure_dev`]).
    pub insecure_dev: bool,
    /// The dashboard backend's MQTT username.
    pub backend_username: String,
    pub backend_password: BackendPassword,
    /// TLS on the public MQTT listener.
    pub mqtt_tls: Option<TlsFiles>,
    /// Connection attempts per second one source may make to the public
    /// MQTT listener, and how many at once.
    pub mqtt_connect_rate: crate::mqtt::front::rate::ConnectRate,
    /// 2FA: limits and the notifier.
    pub twofa: TwoFactorConfig,
}

/// Environment variable holding the SMS webhook's auth header, `Name: value`.
pub const SMS_AUTH_ENV: &str = "LOCKFLEET_SMS_WEBHOOK_AUTH";

/// 2FA settings.
#[derive(Debug, Clone)]
pub struct TwoFactorConfig {
    pub limits: dispatcher::twofa::Limits,
    pub notifier: NotifierChoice,
    /// The OTP text (see [`crate::twofa::notifier::DEFAULT_TEMPLATE`]).
    pub template: String,
}

/// Who sends OTPs.
#[derive(Clone, PartialEq, Eq)]
pub enum NotifierChoice {
    Mqtt,
    Webhook {
        url: String,
        /// (name, value); the value is secret.
        auth_header: Option<(String, zeroize::Zeroizing<String>)>,
        timeout: Duration,
        tries: u32,
    },
}

impl std::fmt::Debug for NotifierChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifierChoice::Mqtt => f.write_str("Mqtt"),
            NotifierChoice::Webhook {
                url,
                auth_header,
                timeout,
                tries,
            } => f
                .debug_struct("Webhook")
                .field("url", url)
                .field("auth_header", &auth_header.as_ref().map(|(n, _)| n))
                .field("timeout", timeout)
                .field("tries", tries)
                .finish(),
        }
    }
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
    #[error("no password for the dashboard backend's MQTT login: with PostgreSQL every instance must accept the same one. Give the password in {BACKEND_PASSWORD_ENV}, or its Argon2id hash (`gateway keys hash-password`) in --backend-password-hash")]
    NoBackendPassword,
    #[error("the backend password hash is not an Argon2id PHC string ($argon2id$v=19$...): make one with `gateway keys hash-password`")]
    BadBackendHash,
    #[error("cannot read or create the backend password file {path}: {source}")]
    BackendPasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
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
    /// The Argon2id hash the dashboard backend's MQTT password is checked
    /// against. A generated password is written once, readable by the
    /// owner only, and its path logged (never the password).
    pub fn backend_password_hash(&self) -> Result<String, ConfigError> {
        use crate::keys::password;
        match &self.backend_password {
            BackendPassword::Env(plain) => Ok(password::hash(plain, password::OPERATOR_COST)),
            BackendPassword::Hash(phc) if password::is_argon2id_phc(phc) => Ok(phc.clone()),
            BackendPassword::Hash(_) => Err(ConfigError::BadBackendHash),
            BackendPassword::DataDir(path) => {
                let file_err = |source| ConfigError::BackendPasswordFile {
                    path: path.clone(),
                    source,
                };
                let plain = match std::fs::read_to_string(path) {
                    Ok(text) => zeroize::Zeroizing::new(text.trim().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let plain = crate::keys::ServerKey::generate_hex();
                        crate::keys::write_new_secret_file(path, &plain).map_err(file_err)?;
                        tracing::warn!(path = %path.display(), username = %self.backend_username, "created a password for the dashboard backend's MQTT login; the backend logs in with it (read it from that file), or set {BACKEND_PASSWORD_ENV}");
                        plain
                    }
                    Err(e) => return Err(file_err(e)),
                };
                if plain.is_empty() {
                    return Err(file_err(std::io::Error::other("the file is empty")));
                }
                Ok(password::hash(&plain, password::OPERATOR_COST))
            }
            BackendPassword::Missing => Err(ConfigError::NoBackendPassword),
        }
    }

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
        let twofa = twofa_config(&s)?;
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
                let login = s.mqtt_broker_username.map(|username| BrokerLogin {
                    username,
                    password: zeroize::Zeroizing::new(
                        std::env::var(BROKER_PASSWORD_ENV).unwrap_or_default(),
                    ),
                });
                MqttMode::External { host, port, login }
            }
            None => MqttMode::Embedded {
                listen: s.mqtt_listen.unwrap_or_else(|| addr(DEFAULT_MQTT_LISTEN)),
                max_connections: s
                    .mqtt_max_connections
                    .unwrap_or(crate::mqtt::broker::DEFAULT_MAX_CONNECTIONS),
            },
        };
        let downlink_budget = s
            .downlink_budget
            .unwrap_or(dispatcher::jobs::DEFAULT_DOWNLINK_BUDGET);
        if !(64..=schemas::device::MAX_UPLINK_BYTES).contains(&downlink_budget) {
            return Err(ConfigError::Invalid(format!(
                "downlink_budget {downlink_budget} must be 64 to {} bytes",
                schemas::device::MAX_UPLINK_BYTES
            )));
        }
        let bridge_timeout_ms = s
            .bridge_timeout_ms
            .unwrap_or(dispatcher::bridge_queue::DEFAULT_TIMEOUT_MS);
        let bridge_max_tries = s
            .bridge_max_tries
            .unwrap_or(dispatcher::bridge_queue::DEFAULT_MAX_TRIES);
        if bridge_timeout_ms == 0 || bridge_max_tries == 0 {
            return Err(ConfigError::Invalid(
                "bridge_timeout_ms and bridge_max_tries must be at least 1".into(),
            ));
        }
        let action_ttl_secs = s
            .bridge_action_ttl_secs
            .unwrap_or(dispatcher::jobs::DEFAULT_IMMEDIATE_TTL_MS / 1000);
        if action_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "bridge_action_ttl_secs must be at least 1".into(),
            ));
        }
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
        let backend_password = match (
            std::env::var(BACKEND_PASSWORD_ENV)
                .ok()
                .filter(|p| !p.trim().is_empty()),
            s.backend_password_hash,
        ) {
            (Some(plain), _) => BackendPassword::Env(zeroize::Zeroizing::new(plain)),
            (None, Some(phc)) => BackendPassword::Hash(phc),
            (None, None) if database_url.starts_with("sqlite:") => {
                BackendPassword::DataDir(data_dir.join(DEFAULT_BACKEND_PASSWORD_FILE))
            }
            (None, None) => BackendPassword::Missing,
        };
        let mqtt_tls = match (s.mqtt_tls_cert, s.mqtt_tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "TLS needs both --mqtt-tls-cert and --mqtt-tls-key".into(),
                ))
            }
        };
        let backend_username = s
            .backend_username
            .unwrap_or_else(|| DEFAULT_BACKEND_USERNAME.to_string());
        if !valid_client_id(&backend_username) {
            return Err(ConfigError::Invalid(format!("backend_username {backend_username:?} must be 1 to {MAX_CLIENT_ID_LEN} characters of A-Z a-z 0-9 - _ . (it is also the backend's client id)")));
        }
        let mqtt_connect_rate = match s.mqtt_connects_per_second {
            None => crate::mqtt::front::rate::ConnectRate::default(),
            Some(r) => crate::mqtt::front::rate::ConnectRate::per_second(r).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "mqtt_connects_per_second must be a positive number, got {r}"
                ))
            })?,
        };
        Ok(Config {
            twofa,
            mqtt_connect_rate,
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
                downlink_budget,
            },
            registry_refresh: Duration::from_secs(s.registry_refresh_secs.unwrap_or(2).max(1)),
            overdue_grace: Duration::from_secs(
                s.overdue_grace_secs
                    .unwrap_or(dispatcher::presence::ONLINE_GRACE_MS / 1000),
            ),
            bridges: crate::bridges::BridgeConfig {
                queue: dispatcher::bridge_queue::BridgeQueueConfig {
                    timeout_ms: bridge_timeout_ms,
                    max_tries: bridge_max_tries,
                },
                immediate_ttl: Duration::from_secs(action_ttl_secs),
            },
            server_key,
            insecure_dev: s.insecure_dev,
            backend_username,
            backend_password,
            mqtt_tls,
        })
    }
}

fn twofa_config(s: &Settings) -> Result<TwoFactorConfig, ConfigError> {
    let mut limits = dispatcher::twofa::Limits::default();
    if let Some(secs) = s.otp_ttl_secs {
        if !(1..=3600).contains(&secs) {
            return Err(ConfigError::Invalid(format!(
                "otp_ttl_secs {secs} must be 1 to 3600 seconds"
            )));
        }
        limits.otp_ttl_ms = secs * 1000;
    }
    if let Some(tries) = s.otp_max_tries {
        if !(1..=10).contains(&tries) {
            return Err(ConfigError::Invalid(format!(
                "otp_max_tries {tries} must be 1 to 10"
            )));
        }
        limits.otp_max_tries = tries;
    }
    let template = s
        .sms_template
        .clone()
        .unwrap_or_else(|| crate::twofa::notifier::DEFAULT_TEMPLATE.to_string());
    if !template.contains("{otp}") {
        return Err(ConfigError::Invalid(
            "sms_template must contain {otp}, where the code goes".into(),
        ));
    }
    let notifier = match s.notifier.as_deref().unwrap_or("mqtt") {
        "mqtt" => NotifierChoice::Mqtt,
        "webhook" => {
            let Some(url) = s.sms_webhook_url.clone() else {
                return Err(ConfigError::Invalid(
                    "--notifier webhook needs --sms-webhook-url (the SMS provider's endpoint)"
                        .into(),
                ));
            };
            let auth_header = match std::env::var(SMS_AUTH_ENV)
                .ok()
                .filter(|v| !v.trim().is_empty())
            {
                None => None,
                Some(v) => {
                    let Some((name, value)) = v.split_once(':') else {
                        return Err(ConfigError::Invalid(format!(
                            "{SMS_AUTH_ENV} must be `Name: value`, e.g. `Authorization: Bearer ...`"
                        )));
                    };
                    Some((
                        name.trim().to_string(),
                        zeroize::Zeroizing::new(value.trim().to_string()),
                    ))
                }
            };
            let tries = s.sms_webhook_tries.unwrap_or(3);
            let timeout_ms = s.sms_webhook_timeout_ms.unwrap_or(2000);
            if tries == 0 || timeout_ms == 0 {
                return Err(ConfigError::Invalid(
                    "sms_webhook_tries and sms_webhook_timeout_ms must be at least 1".into(),
                ));
            }
            NotifierChoice::Webhook {
                url,
                auth_header,
                timeout: Duration::from_millis(timeout_ms),
                tries,
            }
        }
        other => {
            return Err(ConfigError::Invalid(format!(
                "notifier {other:?} is not known: use mqtt or webhook"
            )))
        }
    };
    Ok(TwoFactorConfig {
        limits,
        notifier,
        template,
    })
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
    fn the_mqtt_connect_rate_per_source_is_configurable_and_validated() {
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(
            c.mqtt_connect_rate,
            crate::mqtt::front::rate::ConnectRate::default()
        );
        let c = Config::from_settings(Settings {
            mqtt_connects_per_second: Some(2000.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.mqtt_connect_rate.per_second, 2000.0);
        assert_eq!(c.mqtt_connect_rate.burst, 10_000.0, "five seconds' worth");
        for bad in [0.0, -1.0, f64::NAN] {
            let err = Config::from_settings(Settings {
                mqtt_connects_per_second: Some(bad),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("mqtt_connects_per_second"), "{err}");
        }
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
                port: 1884,
                login: None,
            }
        );
        let s = Settings {
            mqtt_broker: Some("broker:x".into()),
            ..Default::default()
        };
        assert!(Config::from_settings(s).is_err());
    }
}
