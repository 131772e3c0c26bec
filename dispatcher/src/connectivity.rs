//! Whether a bridge's status report changes its connectivity, decided
//! against the stored status. Pure: the store calls it inside the commit's
//! transaction, with the bridge's row locked, so that several gateway
//! instances agree on every change and each is announced once.

use schemas::event::ConnectivityCause;

/// A bridge's connectivity as stored: the newest change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeStatus {
    pub online: bool,
    /// When the change happened, Unix milliseconds; strictly increasing per bridge.
    pub changed_at_ms: u64,
}

/// A bridge said it is online or offline (or the broker published its Last Will).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusReport {
    pub online: bool,
    pub cause: ConnectivityCause,
    pub received_at_ms: u64,
}

/// A status report that changed the bridge's connectivity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub online: bool,
    pub cause: ConnectivityCause,
    /// Strictly later than the previous change: the report's receive time,
    /// or 1 ms after the previous change when that is not earlier.
    pub at_ms: u64,
}

/// Apply `reports` (one bridge's, in the order received) to the stored
/// status `before` (`None`: never reported). Returns, per report, the change
/// it made, and the status after them all.
///
/// A report equal to the current status changes nothing. Change times are
/// kept strictly increasing, so they order the history and make each
/// change's event id unique even within one millisecond.
pub fn apply(
    before: Option<BridgeStatus>,
    reports: impl IntoIterator<Item = StatusReport>,
) -> (Vec<Option<Change>>, Option<BridgeStatus>) {
    let mut current = before;
    let changes = reports
        .into_iter()
        .map(|r| {
            if current.is_some_and(|c| c.online == r.online) {
                return None;
            }
            let at_ms = match current {
                Some(c) => r.received_at_ms.max(c.changed_at_ms + 1),
                None => r.received_at_ms,
            };
            current = Some(BridgeStatus {
                online: r.online,
                changed_at_ms: at_ms,
            });
            Some(Change {
                online: r.online,
                cause: r.cause,
                at_ms,
            })
        })
        .collect();
    (changes, current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectivityCause::*;

    fn report(online: bool, cause: ConnectivityCause, at: u64) -> StatusReport {
        StatusReport {
            online,
            cause,
            received_at_ms: at,
        }
    }

    #[test]
    fn the_first_report_is_a_change() {
        let (changes, after) = apply(None, [report(true, Connected, 100)]);
        assert_eq!(
            changes,
            [Some(Change {
                online: true,
                cause: Connected,
                at_ms: 100
            })]
        );
        assert_eq!(
            after,
            Some(BridgeStatus {
                online: true,
                changed_at_ms: 100
            })
        );
    }

    #[test]
    fn a_repeated_status_changes_nothing() {
        let before = Some(BridgeStatus {
            online: true,
            changed_at_ms: 50,
        });
        let (changes, after) = apply(before, [report(true, Connected, 100)]);
        assert_eq!(changes, [None]);
        assert_eq!(after, before);
    }

    #[test]
    fn flapping_within_a_millisecond_gets_strictly_increasing_times() {
        let reports = [
            report(false, LastWill, 100),
            report(true, Connected, 100),
            report(false, Disconnected, 100),
        ];
        let (changes, after) = apply(
            Some(BridgeStatus {
                online: true,
                changed_at_ms: 100,
            }),
            reports,
        );
        let times: Vec<u64> = changes.iter().map(|c| c.unwrap().at_ms).collect();
        assert_eq!(times, [101, 102, 103]);
        assert_eq!(
            after,
            Some(BridgeStatus {
                online: false,
                changed_at_ms: 103
            })
        );
    }

    #[test]
    fn a_report_received_before_the_stored_change_is_placed_after_it() {
        // Another instance stored a later change; our report still flips the
        // status, and its time keeps the history ordered.
        let (changes, _) = apply(
            Some(BridgeStatus {
                online: false,
                changed_at_ms: 500,
            }),
            [report(true, Connected, 400)],
        );
        assert_eq!(changes[0].unwrap().at_ms, 501);
    }
}
