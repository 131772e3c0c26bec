//! The fleet file: one CSV row per lock or bridge, as `device-sim fleet`
//! writes it and `gateway devices import` reads it (the pairing records an
//! operator exports). Columns, in order:
//!
//! | column | lock | bridge |
//! | --- | --- | --- |
//! | `kind` | `lock` | `bridge` |
//! | `id` | lock id | bridge id |
//! | `model` | `INB1`, `INB1-2FA`, `SP2E`, ... | empty |
//! | `imei` | 15 digits for NB-IoT models, else empty | empty |
//! | `bluetooth_id` | e.g. `INB102e119b9` | empty |
//! | `org` | organisation id | organisation id |
//! | `departments` | `;`-separated, empty in a flat organisation | empty |
//! | `time_zone` | IANA name of the property's zone, e.g. `Asia/Singapore` | empty |
//! | `heartbeat_interval_h` | 1, 2, 5, 12 or 24 | empty |
//! | `activity_log_interval_min` | 1, 10, 30 or 60..1440 step 60 | empty |
//! | `bridge_id` | linked bridge, or empty | empty |
//! | `transport` | how the lock reports: `coap`, `mqtt` or `bridge` | empty |
//! | `master_secret` | the pairing secret, 64 hex characters; empty: the gateway generates one at import | same |
//!
//! A file without the `master_secret` column is read as if it were empty.

use serde::{Deserialize, Serialize};

/// The header line of a fleet file.
pub const HEADER: [&str; 13] = [
    "kind",
    "id",
    "model",
    "imei",
    "bluetooth_id",
    "org",
    "departments",
    "time_zone",
    "heartbeat_interval_h",
    "activity_log_interval_min",
    "bridge_id",
    "transport",
    "master_secret",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Lock,
    Bridge,
}

/// One row of a fleet file, untyped beyond CSV (validation is the importer's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRow {
    pub kind: String,
    pub id: String,
    pub model: String,
    pub imei: String,
    pub bluetooth_id: String,
    pub org: String,
    pub departments: String,
    pub time_zone: String,
    pub heartbeat_interval_h: String,
    pub activity_log_interval_min: String,
    pub bridge_id: String,
    pub transport: String,
    /// Secret: never log a row.
    #[serde(default)]
    pub master_secret: String,
}
