//! The bridges' side of the MQTT task. A payload on `br/{bridge}/cmd` goes
//! to the bridge's [`Relay`] (verified, or counted and dropped unanswered);
//! when the Bluetooth link is done with a command, the linked lock carries
//! it out ([`crate::lock::Lock::apply_bridge_job`]) and its job report
//! leaves like any bridged report: protected under the bridge's context,
//! kept in the lock's outbox, resent on ack timeout. A command for a lock
//! the bridge is not linked to is answered `Rejected` once.
//!
//! A bridge can be held offline ([`crate::control::BridgeHandle`]): its
//! connection task says goodbye and parks; a report in flight goes back to
//! its lock's outbox; back online, the locks send what they kept.
//!
//! A child module of `mqtt_fleet`, so it reaches the task's fields.

use super::*;
use crate::control::{BridgeAction, BridgeStatus};
use schemas::device::{encode, BridgeCommand, JobOutcome, JobReport, JobResult, UplinkKind};

impl MqttFleet {
    /// A payload on the command topic of bridge connection `c`.
    pub(super) fn on_bridge_command(&mut self, c: usize, payload: &[u8], now: Instant) {
        let conn = &mut self.conns[c];
        let Some(bridge) = conn.bridge.as_mut() else {
            return;
        };
        self.stats.bridge_command_received();
        match bridge.relay.receive(payload, conn.keys.as_ref(), now) {
            Ok(_) => self.rearm_relay(c),
            Err(why) => {
                // The reason only: a command may carry a PIN.
                tracing::debug!(bridge = %bridge.id, reason = why.reason(), "bridge command dropped");
                self.stats.bridge_command_refused(why.reason());
            }
        }
    }

    /// The Bluetooth link of bridge connection `c` is done with the
    /// commands due by `now`.
    pub(super) fn on_relay_due(&mut self, c: usize, now: Instant) {
        while let Some(command) = self.conns[c]
            .bridge
            .as_mut()
            .and_then(|b| b.relay.pop_due(now))
        {
            self.carry_out(c, command, now);
        }
        self.rearm_relay(c);
    }

    fn rearm_relay(&mut self, c: usize) {
        let due = self.conns[c]
            .bridge
            .as_ref()
            .and_then(|b| b.relay.next_due());
        match due {
            Some(at) => self.timers.set(Timer::Relay(c), at),
            None => self.timers.cancel(Timer::Relay(c)),
        }
    }

    fn carry_out(&mut self, c: usize, command: BridgeCommand, now: Instant) {
        let linked = self.conns[c]
            .slots
            .iter()
            .copied()
            .find(|&i| self.slots[i].lock.id() == command.lock_id);
        let Some(i) = linked else {
            self.reject_unlinked(c, &command);
            return;
        };
        let lock = &mut self.slots[i].lock;
        let applied = lock.apply_bridge_job(&command.job, now, &self.clock);
        self.counters.store(lock.index(), lock.counters());
        self.stats.record(&applied.queued);
        if let Some(b) = self.conns[c].bridge.as_mut() {
            if applied.repeat {
                b.relay.counts.repeated += 1;
            } else {
                b.relay.counts.applied += 1;
                self.stats.bridge_command_applied();
            }
        }
        tracing::debug!(
            lock = %command.lock_id,
            job = command.job.id,
            attempt = command.job.attempt,
            action = command.job.action.as_str(),
            outcome = ?applied.result.outcome,
            repeat = applied.repeat,
            "bridge command carried out"
        );
        self.pump(i, now);
        self.rearm(i);
        self.settle(i, now);
    }

    /// Answers a command for a lock bridge connection `c` is not linked to
    /// with a `Rejected` job report under the bridge's own report seq (the
    /// lock's counter is out of its reach). Published once: no lock's
    /// outbox holds it, and the gateway, which sent a command for a lock
    /// not linked to this bridge, refuses reports for it anyway.
    fn reject_unlinked(&mut self, c: usize, command: &BridgeCommand) {
        let conn = &mut self.conns[c];
        let Some(b) = conn.bridge.as_mut() else {
            return;
        };
        b.relay.counts.unlinked += 1;
        let seq = b.counters.next_seq;
        b.counters.next_seq = seq.wrapping_add(1).max(1);
        let report = JobReport {
            lock_id: command.lock_id.clone(),
            seq,
            results: vec![JobResult {
                id: command.job.id,
                attempt: command.job.attempt,
                outcome: JobOutcome::Rejected,
                detail: Some(format!(
                    "lock {} is not linked to this bridge",
                    command.lock_id
                )),
            }],
        };
        let cbor = encode(&report);
        let payload = match &conn.keys {
            None => Ok(cbor),
            Some(keys) => b
                .counters
                .take_oscore_seq()
                .ok_or("oscore_exhausted")
                .and_then(|oscore_seq| {
                    keys.protect_mqtt(oscore_seq, &cbor)
                        .map(|(frame, _request)| frame)
                        .map_err(|_| "unsendable")
                }),
        };
        self.counters.store(b.index, b.counters);
        tracing::debug!(bridge = %b.id, lock = %command.lock_id, "command for a lock not linked to the bridge rejected");
        let route = Route::Bridged {
            bridge: b.id.clone(),
            lock: command.lock_id.clone(),
        };
        let sent = payload.and_then(|payload| {
            conn.client
                .try_publish(
                    route.uplink_topic(UplinkKind::JobReport),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .map_err(|_| "mqtt_queue_full")
        });
        match sent {
            // Not a lock's report: it keeps the PUBACK pairing in step.
            Ok(()) => {
                if let Some(t) = conn.pubacks.as_mut() {
                    t.queued(None);
                }
            }
            Err(code) => self.stats.error(code),
        }
    }

    pub(super) fn on_bridge_control(&mut self, control: BridgeControl) {
        let Some(&c) = self.by_bridge.get(&control.bridge) else {
            // Handles are made from this task's own bridges: cannot happen.
            tracing::debug!(bridge = %control.bridge, "command for a bridge this task does not run");
            return;
        };
        match control.action {
            BridgeAction::Status(reply) => {
                let _ = reply.send(self.bridge_status(c));
            }
            BridgeAction::GoOffline(reply) => self.hold_offline(c, reply),
            BridgeAction::GoOnline(reply) => self.release(c, reply),
        }
    }

    fn hold_offline(&mut self, c: usize, reply: oneshot::Sender<Result<(), ControlError>>) {
        let conn = &mut self.conns[c];
        let Some(b) = conn.bridge.as_mut() else {
            return;
        };
        if b.held_offline && b.parked {
            let _ = reply.send(Ok(()));
            return;
        }
        b.held_offline = true;
        for waiter in b.online_waiters.drain(..) {
            let _ = waiter.send(Err(ControlError::Superseded));
        }
        b.offline_waiters.push(reply);
        // Nothing more is published; the connection task says goodbye.
        conn.up = false;
        conn.online.send_replace(false);
        self.lose_pubacks(c);
    }

    fn release(&mut self, c: usize, reply: oneshot::Sender<Result<(), ControlError>>) {
        let conn = &mut self.conns[c];
        let Some(b) = conn.bridge.as_mut() else {
            return;
        };
        if !b.held_offline && conn.up {
            let _ = reply.send(Ok(()));
            return;
        }
        b.held_offline = false;
        for waiter in b.offline_waiters.drain(..) {
            let _ = waiter.send(Err(ControlError::Superseded));
        }
        b.online_waiters.push(reply);
        conn.online.send_replace(true);
        // What the locks kept goes as soon as the connection is up, not at
        // their next wake.
        for &i in &conn.slots {
            self.slots[i].lock.resume();
        }
    }

    /// Bridge connection `c` is connected and subscribed.
    pub(super) fn on_bridge_up(&mut self, c: usize) {
        if let Some(b) = self.conns[c].bridge.as_mut() {
            b.parked = false;
            for waiter in b.online_waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }
        }
    }

    /// Bridge connection `c` was closed on command. Its reports in flight
    /// stay in their locks' outboxes, to go again once it is back; an
    /// answer to one that still arrives (a broker keeping the session
    /// delivers it on reconnection) is still taken.
    pub(super) fn on_bridge_parked(&mut self, c: usize) {
        self.conns[c].up = false;
        for i in self.conns[c].slots.clone() {
            let slot = &mut self.slots[i];
            if let Some(w) = slot.wait.take() {
                self.stats.in_flight_add(-1);
                slot.lock.on_gave_up(w.seq);
                if let Some(r) = slot.lock.report(w.seq) {
                    self.waiters.on_gave_up(i, r.kind, w.seq);
                }
            }
            self.rearm(i);
        }
        let Some(b) = self.conns[c].bridge.as_mut() else {
            return;
        };
        b.parked = true;
        for waiter in b.offline_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
    }

    fn bridge_status(&self, c: usize) -> BridgeStatus {
        let conn = &self.conns[c];
        let locks = conn.slots.iter().map(|&i| &self.slots[i].lock);
        let (id, held_offline, counts, queued) = match &conn.bridge {
            Some(b) => (
                b.id.clone(),
                b.held_offline,
                b.relay.counts,
                b.relay.queued(),
            ),
            None => Default::default(),
        };
        BridgeStatus {
            id,
            online: conn.up && !held_offline,
            held_offline,
            commands_received: counts.received,
            commands_refused: counts.refused,
            commands_applied: counts.applied,
            commands_repeated: counts.repeated,
            commands_unlinked: counts.unlinked,
            commands_queued: queued,
            outbox: locks.clone().map(|l| l.outbox().count()).sum(),
            locks: locks.map(|l| l.id().to_string()).collect(),
        }
    }
}
