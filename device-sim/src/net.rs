//! Network impairment: the loss and duplication a test injects to prove the
//! gateway stores every acknowledged report exactly once. Pure decisions
//! from a seeded RNG; the transports apply them to real datagrams and
//! publishes.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Probabilities of loss and duplication, each in `0.0..=1.0`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NetFaults {
    /// Each outgoing datagram/publish, and each incoming CoAP response, is
    /// dropped with this probability.
    pub loss: f64,
    /// Each outgoing CoAP datagram is sent twice (each MQTT report published
    /// twice) with this probability.
    pub dup: f64,
}

/// A probability outside `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{name} must be a probability between 0 and 1, got {value}")]
pub struct BadProbability {
    pub name: &'static str,
    pub value: f64,
}

impl NetFaults {
    pub fn new(loss: f64, dup: f64) -> Result<Self, BadProbability> {
        for (name, value) in [("loss", loss), ("dup", dup)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(BadProbability { name, value });
            }
        }
        Ok(NetFaults { loss, dup })
    }
}

/// What to do with one outgoing message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Pretend it was lost on the way.
    Drop,
    Send,
    /// Send it, and an identical copy right after.
    SendTwice,
}

impl Fate {
    /// How many copies go on the wire.
    pub fn copies(self) -> usize {
        match self {
            Fate::Drop => 0,
            Fate::Send => 1,
            Fate::SendTwice => 2,
        }
    }
}

/// Draws fates for one task's traffic.
#[derive(Debug)]
pub struct Impairment {
    faults: NetFaults,
    rng: SmallRng,
}

impl Impairment {
    pub fn new(faults: NetFaults, seed: u64) -> Self {
        Impairment {
            faults,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The fate of an outgoing datagram or publish.
    pub fn outgoing(&mut self) -> Fate {
        if self.faults.loss > 0.0 && self.rng.random_bool(self.faults.loss) {
            Fate::Drop
        } else if self.faults.dup > 0.0 && self.rng.random_bool(self.faults.dup) {
            Fate::SendTwice
        } else {
            Fate::Send
        }
    }

    /// True when an incoming response should be treated as lost.
    pub fn drop_incoming(&mut self) -> bool {
        self.faults.loss > 0.0 && self.rng.random_bool(self.faults.loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_faults_always_sends_once() {
        let mut imp = Impairment::new(NetFaults::default(), 1);
        assert!((0..1000).all(|_| imp.outgoing() == Fate::Send));
        assert!((0..1000).all(|_| !imp.drop_incoming()));
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let mut imp = Impairment::new(NetFaults::new(0.2, 0.1).unwrap(), 7);
        let n = 20_000;
        let fates: Vec<Fate> = (0..n).map(|_| imp.outgoing()).collect();
        let drops = fates.iter().filter(|f| **f == Fate::Drop).count() as f64 / n as f64;
        let dups = fates.iter().filter(|f| **f == Fate::SendTwice).count() as f64 / n as f64;
        assert!((0.18..0.22).contains(&drops), "{drops}");
        // Duplication applies to the 80 % that were not dropped.
        assert!((0.06..0.10).contains(&dups), "{dups}");
    }

    #[test]
    fn probabilities_are_validated() {
        assert_eq!(
            NetFaults::new(1.5, 0.0),
            Err(BadProbability {
                name: "loss",
                value: 1.5
            })
        );
        assert!(NetFaults::new(0.0, -0.1).is_err());
        assert!(NetFaults::new(f64::NAN, 0.0).is_err());
    }
}
