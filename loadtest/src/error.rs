//! Everything that can stop a load test, each with what the user should do
//! about it. Nothing here panics on bad input or a misbehaving gateway: the
//! caller gets one of these, and the binary prints it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("invalid option: {0}")]
    InvalidOption(String),

    #[error(
        "the gateway binary is not at {}: build it first with \
         `cargo build --release -p gateway` (or pass --gateway-bin PATH)",
        path.display()
    )]
    GatewayMissing { path: PathBuf },

    #[error("cannot start the gateway {}: {source}", path.display())]
    GatewaySpawn {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("`gateway devices import` failed ({status}); its last output:\n{log}")]
    Import { status: String, log: String },

    #[error("the gateway exited during start-up ({status}); its last output:\n{log}")]
    GatewayExited { status: String, log: String },

    #[error(
        "the gateway did not {what} within {timeout:?}; is the machine overloaded? \
         Its last output:\n{log}"
    )]
    GatewayTimeout {
        what: &'static str,
        timeout: Duration,
        log: String,
    },

    #[error(
        "the gateway did not stop cleanly after SIGTERM ({status}): a drain problem \
         worth a bug report. Its last output:\n{log}"
    )]
    GatewayStop { status: String, log: String },

    #[error(
        "cannot reach PostgreSQL at {url}: {detail}. Start it (bash .ci/run does), \
         pass --postgres-url postgres://USER@HOST:PORT/DB, or use --engine sqlite"
    )]
    PostgresUnreachable { url: String, detail: String },

    #[error("PostgreSQL at {url} refused `{statement}`: {detail}")]
    Postgres {
        url: String,
        statement: String,
        detail: String,
    },

    #[error("the database {url} refused `{statement}`: {detail}")]
    Database {
        url: String,
        statement: String,
        detail: String,
    },

    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },

    #[error("cannot generate or write the fleet: {0}")]
    Fleet(String),

    #[error("the simulator failed: {0}")]
    Sim(#[from] device_sim::run::RunError),

    #[error("GET {url} failed: {detail}")]
    Http { url: String, detail: String },

    #[error("cannot read {path}: {detail}")]
    Proc { path: String, detail: String },

    #[error(
        "no libcoap server binary on PATH (looked for {searched}): install Debian's \
         libcoap3-bin (`apt-get install libcoap3-bin`) for the raw CoAP baseline, \
         or pass --no-libcoap to measure without it"
    )]
    LibcoapMissing { searched: String },

    #[error("cannot start libcoap's server {}: {source}", path.display())]
    LibcoapSpawn {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "libcoap's coap-server did not {what}; is the machine overloaded? \
         (--no-libcoap skips the baseline.) Its last output:\n{log}"
    )]
    LibcoapStart { what: String, log: String },

    #[error("libcoap's coap-server exited during start-up ({status}); its last output:\n{log}")]
    LibcoapExited { status: String, log: String },

    #[error("libcoap's coap-server did not stop cleanly after SIGTERM ({status}); its last output:\n{log}")]
    LibcoapStop { status: String, log: String },

    #[error("interrupted (Ctrl-C); the run's database and server were cleaned up")]
    Interrupted,

    #[error(
        "cannot use {} as the chart's font: {detail}. Install it with \
         `apt-get install fonts-dejavu-core`, or pass --chart-font PATH to a TrueType font",
        path.display()
    )]
    ChartFont { path: PathBuf, detail: String },

    #[error("cannot draw the chart {}: {detail}", path.display())]
    Chart { path: PathBuf, detail: String },

    #[error(
        "no mosquitto binary (looked at {looked}): the MQTT baseline needs Debian's \
         broker, `apt-get install mosquitto` (or pass --mosquitto-bin PATH), or run \
         without the baseline with --no-mosquitto"
    )]
    MosquittoMissing { looked: String },

    #[error("cannot start Mosquitto {}: {source}", path.display())]
    MosquittoSpawn {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("Mosquitto exited during start-up ({status}); its last output:\n{log}")]
    MosquittoExited { status: String, log: String },

    #[error("Mosquitto did not {what} within {timeout:?}; its last output:\n{log}")]
    MosquittoTimeout {
        what: &'static str,
        timeout: Duration,
        log: String,
    },

    #[error("Mosquitto did not stop cleanly after SIGTERM ({status}); its last output:\n{log}")]
    MosquittoStop { status: String, log: String },
}

impl LoadtestError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LoadtestError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = LoadtestError> = std::result::Result<T, E>;
