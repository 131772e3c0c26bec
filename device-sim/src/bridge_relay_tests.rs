//! Unit tests of a bridge's command relay: what verifies, what is refused,
//! and when the Bluetooth link is done with each command.

use super::*;
use crate::fleet::MasterSecret;
use lockfleet_oscore::{
    protect_request, InnerMessage, Params, PartialIv, SecurityContext, CODE_CHANGED,
};
use schemas::device::{encode, DeviceJob, JobAction};
use schemas::security::{encode_protected, DEVICE_OSCORE_ID, SERVER_OSCORE_ID};

const BRIDGE: &str = "B00001";

fn secret() -> MasterSecret {
    MasterSecret::from_bytes([9; 32])
}

fn keys() -> DeviceKeys {
    DeviceKeys::for_bridge(BRIDGE, &secret()).unwrap()
}

/// The gateway's end of the bridge's context.
fn gateway(secret: &MasterSecret) -> SecurityContext {
    SecurityContext::derive(&Params {
        master_secret: secret.as_bytes(),
        master_salt: b"",
        sender_id: SERVER_OSCORE_ID,
        recipient_id: DEVICE_OSCORE_ID,
        id_context: Some(format!("br/{BRIDGE}").as_bytes()),
    })
    .unwrap()
}

fn command(job_id: u64) -> BridgeCommand {
    BridgeCommand {
        lock_id: "L000001".into(),
        job: DeviceJob {
            id: job_id,
            attempt: 1,
            action: JobAction::Unlock,
            access: None,
            pin: None,
            pin_type: None,
            start: None,
            end: None,
            heartbeat_interval: None,
            activity_log_interval: None,
            issued: 1_800_000_000,
        },
    }
}

/// What the gateway publishes: `plaintext` protected under its sequence
/// number `seq`, no kid context.
fn sealed_raw(ctx: &SecurityContext, seq: u64, plaintext: &[u8]) -> Vec<u8> {
    let piv = PartialIv::from_seq(seq).unwrap();
    let (p, _) = protect_request(ctx, piv, plaintext, false, &[]).unwrap();
    encode_protected(&p.option, &p.ciphertext)
}

fn sealed(seq: u64, cmd: &BridgeCommand) -> Vec<u8> {
    let plain = InnerMessage::bare(CODE_POST, encode(cmd)).encode().unwrap();
    sealed_raw(&gateway(&secret()), seq, &plain)
}

#[test]
fn a_protected_command_opens_once_and_its_replay_is_refused() {
    let keys = keys();
    let mut window = ReplayWindow::new();
    let frame = sealed(7, &command(1));
    assert_eq!(
        open_command(&frame, Some(&keys), &mut window).unwrap(),
        command(1)
    );
    assert!(matches!(
        open_command(&frame, Some(&keys), &mut window),
        Err(Refused::Replay(Replay::AlreadySeen { seq: 7 }))
    ));
    // An older, unseen sequence number is still within the window.
    let older = sealed(5, &command(2));
    assert_eq!(
        open_command(&older, Some(&keys), &mut window).unwrap(),
        command(2)
    );
}

#[test]
fn anything_not_a_verified_post_of_a_command_is_refused() {
    let keys = keys();
    let mut window = ReplayWindow::new();
    let mut refused = |payload: &[u8]| {
        open_command(payload, Some(&keys), &mut window)
            .unwrap_err()
            .reason()
    };
    // Plain CBOR in a secure run.
    assert_eq!(refused(&encode(&command(1))), "frame");
    // Another bridge's key.
    let other = gateway(&MasterSecret::from_bytes([8; 32]));
    let plain = InnerMessage::bare(CODE_POST, encode(&command(1)))
        .encode()
        .unwrap();
    assert_eq!(refused(&sealed_raw(&other, 1, &plain)), "oscore");
    // A flipped bit.
    let mut forged = sealed(2, &command(1));
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(refused(&forged), "oscore");
    // Not a POST, or not a command inside.
    let changed = InnerMessage::bare(CODE_CHANGED, encode(&command(1)))
        .encode()
        .unwrap();
    assert_eq!(
        refused(&sealed_raw(&gateway(&secret()), 3, &changed)),
        "code"
    );
    let junk = InnerMessage::bare(CODE_POST, &b"\xa0"[..])
        .encode()
        .unwrap();
    assert_eq!(
        refused(&sealed_raw(&gateway(&secret()), 4, &junk)),
        "decode"
    );
    // Both were authentic: their sequence numbers are used up.
    assert_eq!(
        refused(&sealed_raw(&gateway(&secret()), 4, &plain)),
        "replay"
    );
    // No Partial IV (an empty option, as in a response).
    assert_eq!(refused(&encode_protected(&[], &[0; 16])), "option");
}

#[test]
fn an_insecure_bridge_takes_plain_commands_and_refuses_protected_ones() {
    let mut window = ReplayWindow::new();
    assert_eq!(
        open_command(&encode(&command(1)), None, &mut window).unwrap(),
        command(1)
    );
    assert_eq!(
        open_command(&sealed(1, &command(1)), None, &mut window)
            .unwrap_err()
            .reason(),
        "no_keys"
    );
    assert_eq!(
        open_command(b"\x01", None, &mut window)
            .unwrap_err()
            .reason(),
        "decode"
    );
}

#[test]
fn the_link_does_one_command_at_a_time_each_after_its_drawn_delay() {
    let delay = BleDelay::new(Duration::from_millis(200), Duration::from_millis(1500)).unwrap();
    let mut relay = Relay::new(delay, 1);
    let keys = keys();
    let t0 = Instant::now();
    let first = relay
        .receive(&sealed(1, &command(1)), Some(&keys), t0)
        .unwrap();
    let second = relay
        .receive(&sealed(2, &command(2)), Some(&keys), t0)
        .unwrap();
    let wait = first - t0;
    assert!((delay.min()..=delay.max()).contains(&wait), "{wait:?}");
    let after = second - first;
    assert!((delay.min()..=delay.max()).contains(&after), "{after:?}");
    assert_eq!(relay.next_due(), Some(first));
    assert_eq!(relay.pop_due(first - Duration::from_millis(1)), None);
    assert_eq!(relay.pop_due(first), Some(command(1)));
    assert_eq!(relay.queued(), 1);
    // A command arriving once the link is idle waits only its own delay.
    let later = second + Duration::from_secs(10);
    assert_eq!(relay.pop_due(later), Some(command(2)));
    let third = relay
        .receive(&sealed(3, &command(3)), Some(&keys), later)
        .unwrap();
    assert!((delay.min()..=delay.max()).contains(&(third - later)));
    // The replay is counted as received and refused, and not queued.
    assert!(relay
        .receive(&sealed(3, &command(3)), Some(&keys), later)
        .is_err());
    assert_eq!(
        relay.counts,
        RelayCounts {
            received: 4,
            refused: 1,
            ..RelayCounts::default()
        }
    );
    assert_eq!(relay.queued(), 1);
}

#[test]
fn a_full_link_queue_refuses_without_using_up_the_sequence_number() {
    let fixed = BleDelay::new(Duration::from_secs(1), Duration::from_secs(1)).unwrap();
    let mut relay = Relay::new(fixed, 1);
    let keys = keys();
    let t0 = Instant::now();
    for seq in 1..=MAX_QUEUED_COMMANDS as u64 {
        let done = relay
            .receive(&sealed(seq, &command(seq)), Some(&keys), t0)
            .unwrap();
        assert_eq!(done, t0 + Duration::from_secs(seq), "one after the other");
    }
    let next = sealed(100, &command(100));
    assert_eq!(
        relay.receive(&next, Some(&keys), t0).unwrap_err().reason(),
        "busy"
    );
    relay.pop_due(t0 + Duration::from_secs(1)).unwrap();
    assert!(relay.receive(&next, Some(&keys), t0).is_ok());
}

#[test]
fn ble_delays_parse_from_milliseconds() {
    let d = BleDelay::parse_ms("200..1500").unwrap();
    assert_eq!(d, BleDelay::DEFAULT);
    assert_eq!(BleDelay::parse_ms("200..=1500").unwrap(), BleDelay::DEFAULT);
    let fixed = BleDelay::parse_ms("50").unwrap();
    assert_eq!(
        (fixed.min(), fixed.max()),
        (Duration::from_millis(50), Duration::from_millis(50))
    );
    assert!(matches!(
        BleDelay::parse_ms("900..100"),
        Err(BleDelayError::Order { .. })
    ));
    assert!(matches!(
        BleDelay::parse_ms("1s..2s"),
        Err(BleDelayError::Syntax(_))
    ));
    let mut rng = SmallRng::seed_from_u64(3);
    for _ in 0..100 {
        assert_eq!(fixed.draw(&mut rng), Duration::from_millis(50));
    }
}
