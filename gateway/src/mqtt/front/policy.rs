//! Who may publish and subscribe where: the topic confinement rumqttd lacks
//! (it has no per-topic ACL), decided here from the authenticated identity
//! alone. Pure functions; the front applies them to every packet.
//!
//! * A lock `L` publishes only `lk/L/up/hb`, `lk/L/up/log` and
//!   `lk/L/up/jr`, and subscribes only inside `lk/L/` (its acks and errors).
//! * A bridge `B` publishes only `br/B/up/hb`, `br/B/up/log`, `br/B/up/jr`
//!   and `br/B/status` (also its Last Will), and subscribes only inside
//!   `br/B/` (acks, errors and its commands, `br/B/cmd`).
//! * The dashboard backend is routed to a broker of its own, which carries
//!   no device topic at all, so it may use any topic there.

use dispatcher::keys::DeviceRef;

/// An authenticated MQTT client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Device(DeviceRef),
    /// The dashboard backend (its own broker).
    Backend,
}

/// The topic subtree a device owns: `lk/{id}/` or `br/{id}/`.
fn subtree(device: &DeviceRef) -> String {
    match device {
        DeviceRef::Lock(l) => format!("lk/{l}/"),
        DeviceRef::Bridge(b) => format!("br/{b}/"),
    }
}

/// May `who` publish on `topic`? (Also applies to a Last Will's topic.)
pub fn may_publish(who: &Identity, topic: &str) -> bool {
    let device = match who {
        Identity::Backend => return true,
        Identity::Device(d) => d,
    };
    let Some(rest) = topic.strip_prefix(&subtree(device)) else {
        return false;
    };
    match device {
        DeviceRef::Lock(_) => matches!(rest, "up/hb" | "up/log" | "up/jr"),
        DeviceRef::Bridge(_) => matches!(rest, "up/hb" | "up/log" | "up/jr" | "status"),
    }
}

/// May `who` subscribe to `filter`? A device's filter must lie inside its
/// own subtree: a literal prefix, with wildcards only after it.
pub fn may_subscribe(who: &Identity, filter: &str) -> bool {
    let device = match who {
        Identity::Backend => return true,
        Identity::Device(d) => d,
    };
    match filter.strip_prefix(&subtree(device)) {
        Some(rest) => !rest.is_empty() && valid_filter_tail(rest),
        None => false,
    }
}

/// A filter's levels after a literal prefix: `#` only as the last level,
/// `+` only as a whole level (MQTT 3.1.1 §4.7.1).
fn valid_filter_tail(rest: &str) -> bool {
    let levels: Vec<&str> = rest.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['#', '+']),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher::{BridgeId, LockId};

    fn lock(id: &str) -> Identity {
        Identity::Device(DeviceRef::Lock(LockId::new(id)))
    }
    fn bridge(id: &str) -> Identity {
        Identity::Device(DeviceRef::Bridge(BridgeId::new(id)))
    }

    #[test]
    fn a_device_publishes_only_its_own_uplinks() {
        assert!(may_publish(&lock("L1"), "lk/L1/up/hb"));
        assert!(may_publish(&lock("L1"), "lk/L1/up/log"));
        assert!(may_publish(&lock("L1"), "lk/L1/up/jr"));
        for t in [
            "lk/L2/up/hb",
            "lk/L1/ack/hb",
            "lk/L1/up/hb/x",
            "lk/L1/status",
            "br/L1/up/hb",
            "events/v1/o/lock/L1/heartbeat",
            "lk/L1",
        ] {
            assert!(!may_publish(&lock("L1"), t), "{t}");
        }
        assert!(may_publish(&bridge("B1"), "br/B1/status"));
        assert!(may_publish(&bridge("B1"), "br/B1/up/hb"));
        assert!(may_publish(&bridge("B1"), "br/B1/up/jr"));
        assert!(
            !may_publish(&bridge("B1"), "br/B1/cmd"),
            "commands come from the gateway"
        );
        assert!(
            !may_publish(&bridge("B1"), "br/B2/status"),
            "a bridge cannot say another is offline"
        );
        assert!(!may_publish(&bridge("B1"), "lk/L1/up/hb"));
    }

    #[test]
    fn a_device_subscribes_only_inside_its_subtree() {
        for f in ["lk/L1/ack/hb", "lk/L1/ack/+", "lk/L1/#", "lk/L1/err"] {
            assert!(may_subscribe(&lock("L1"), f), "{f}");
        }
        for f in [
            "#",
            "+/L1/ack/hb",
            "lk/+/ack/hb",
            "lk/L2/ack/hb",
            "lk/L1",
            "lk/L1/",
            "lk/L1/a#",
            "lk/L1/#/x",
            "events/v1/#",
            "$share/g/lk/L1/ack/hb",
            "br/B1/#",
        ] {
            assert!(!may_subscribe(&lock("L1"), f), "{f}");
        }
        assert!(may_subscribe(&bridge("B1"), "br/B1/ack/#"));
        assert!(!may_subscribe(&bridge("B1"), "br/#"));
    }

    #[test]
    fn the_backend_is_not_confined_on_its_own_broker() {
        assert!(may_subscribe(&Identity::Backend, "events/v1/#"));
        assert!(may_publish(&Identity::Backend, "cmd/v1/org/x"));
    }

    #[test]
    fn an_id_that_prefixes_another_grants_nothing_of_the_other() {
        assert!(!may_publish(&lock("L1"), "lk/L10/up/hb"));
        assert!(!may_subscribe(&lock("L1"), "lk/L10/#"));
    }
}
