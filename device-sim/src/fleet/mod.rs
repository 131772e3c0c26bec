//! The simulated fleet: typed locks and bridges, generated from a
//! [`FleetSpec`] ([`generate`]) and stored as the fleet file of
//! [`schemas::fleet`] ([`Fleet::write_csv`], [`Fleet::read_csv`]).
//!
//! This module owns the fleet's invariants (unique ids, at most
//! [`MAX_LOCKS_PER_BRIDGE`] locks per bridge, models matching transports,
//! a pairing secret for every device) and checks them on every file it
//! reads. It knows nothing of the network.
//!
//! Every lock and bridge carries its [`MasterSecret`] (the `master_secret`
//! column): generated from the operating system's randomness, not from the
//! fleet's seed, so the file is as secret as the devices' keys.

mod file;
mod generate;
mod secret;

pub use file::FleetError;
pub use generate::{generate, FleetSpec, SpecError};
pub use secret::{MasterSecret, SecretProblem, MASTER_SECRET_LEN};

use schemas::event::Transport;
use schemas::{ActivityLogInterval, HeartbeatInterval, LockModel};

/// The guide: "each bridge can be linked to at most 2 locks".
pub const MAX_LOCKS_PER_BRIDGE: usize = 2;

/// Most departments one organisation may have, as the dashboard allows.
pub const MAX_DEPARTMENTS_PER_ORG: usize = 20;

/// Separator of the `departments` column.
pub const DEPARTMENT_SEPARATOR: char = ';';

/// One lock as paired: identity, organisation, settings and how it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockSpec {
    pub id: String,
    pub model: LockModel,
    /// 15 digits for NB-IoT models; `None` for Bluetooth-only models.
    pub imei: Option<String>,
    pub bluetooth_id: String,
    pub org: String,
    /// Empty in a flat organisation.
    pub departments: Vec<String>,
    /// IANA zone of the property.
    pub time_zone: String,
    pub heartbeat_interval: HeartbeatInterval,
    pub activity_log_interval: ActivityLogInterval,
    /// The bridge the lock is linked to, if any.
    pub bridge_id: Option<String>,
    pub transport: Transport,
    /// The pairing secret its OSCORE context derives from (used by CoAP and
    /// MQTT locks; a bridged lock's reports use its bridge's).
    pub master_secret: MasterSecret,
}

/// One bridge as paired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSpec {
    pub id: String,
    pub org: String,
    /// The pairing secret of the bridge's OSCORE context and MQTT password.
    pub master_secret: MasterSecret,
}

/// A whole fleet. Bridges come first in the file so that every lock's
/// `bridge_id` refers to a row already read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    pub bridges: Vec<BridgeSpec>,
    pub locks: Vec<LockSpec>,
}

impl Fleet {
    /// The locks linked to `bridge_id`, in file order.
    pub fn locks_of_bridge<'a>(&'a self, bridge_id: &'a str) -> impl Iterator<Item = &'a LockSpec> {
        self.locks
            .iter()
            .filter(move |l| l.bridge_id.as_deref() == Some(bridge_id))
    }

    /// How many locks report over `transport`.
    pub fn count_by_transport(&self, transport: Transport) -> usize {
        self.locks
            .iter()
            .filter(|l| l.transport == transport)
            .count()
    }
}

/// Parses a transport column value.
pub fn parse_transport(s: &str) -> Option<Transport> {
    match s {
        "coap" => Some(Transport::Coap),
        "mqtt" => Some(Transport::Mqtt),
        "bridge" => Some(Transport::Bridge),
        _ => None,
    }
}
