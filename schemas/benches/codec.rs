//! The device codec on the ingest hot path: a heartbeat's CBOR (what every
//! lock sends, RFC 8949 map with integer keys) decoded and encoded, beside
//! the same heartbeat as JSON through serde_json in the same run (the
//! baseline: what a JSON device protocol would cost).
//!
//! Run: `cargo bench -p schemas --bench codec`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use schemas::{
    ActivityLogInterval, Battery, BatteryLevel, ChannelInfo, DoorState, Heartbeat,
    HeartbeatInterval, LockState, SignalQuality,
};
use std::hint::black_box;

fn heartbeat() -> Heartbeat {
    Heartbeat {
        lock_id: "L000001".into(),
        seq: 7,
        device_time: 1_790_000_000,
        battery: Battery::Level(BatteryLevel::Moderate),
        signal_db: 6,
        signal_quality: SignalQuality::Poor,
        carrier: "Singtel".into(),
        channel: Some(ChannelInfo {
            earfcn: 3734,
            pci: 101,
            cell_id: 0x1A2B3C,
            band: 8,
        }),
        lock_state: LockState::Locked,
        door_state: DoorState::Closed,
        firmware: "1.4.2".into(),
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
    }
}

fn codec(c: &mut Criterion) {
    let hb = heartbeat();
    let cbor = schemas::device::encode(&hb);
    let json = serde_json::to_vec(&hb).expect("a heartbeat serialises");
    assert_eq!(Heartbeat::decode(&cbor).expect("round trip"), hb);

    let mut g = c.benchmark_group("heartbeat");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cbor decode", |b| {
        b.iter(|| Heartbeat::decode(black_box(&cbor)).expect("decodes"))
    });
    g.bench_function("json decode (baseline)", |b| {
        b.iter(|| serde_json::from_slice::<Heartbeat>(black_box(&json)).expect("decodes"))
    });
    g.bench_function("cbor encode", |b| {
        b.iter(|| schemas::device::encode(black_box(&hb)))
    });
    g.bench_function("json encode (baseline)", |b| {
        b.iter(|| serde_json::to_vec(black_box(&hb)).expect("encodes"))
    });
    g.finish();
    println!(
        "heartbeat: {} bytes of CBOR, {} bytes of JSON",
        cbor.len(),
        json.len()
    );
}

criterion_group!(benches, codec);
criterion_main!(benches);
