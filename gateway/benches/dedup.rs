//! CoAP message deduplication (RFC 7252 §4.5) on the ingest hot path: the
//! gateway's [`ExchangeTable`] taking a new request and completing it, a
//! retransmission answered from it, and expiry, at a realistic table size
//! (100 000 exchanges held, the oldest forgotten as new ones come). Baseline
//! in the same run: a bare `HashMap` of the same size and keys (insert the
//! new, remove the oldest; look up), the least any exchange table can do.
//!
//! Run: `cargo bench -p gateway --bench dedup`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gateway::coap::exchange::{ExchangeTable, Verdict};
use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Exchanges held while measuring: a few seconds of a busy gateway.
const HELD: u32 = 100_000;

/// The `n`th (peer, message id): 64 peers (locks behind a few NATs), ids in turn.
fn key(n: u32) -> (SocketAddr, u16) {
    let peer = SocketAddr::from(([10, 0, (n % 64) as u8, 1], 5683));
    (peer, (n / 64) as u16)
}

fn filled(now: Instant) -> ExchangeTable {
    let mut t = ExchangeTable::new(HELD as usize);
    let answer = Bytes::from_static(&[0x60, 0x44, 0, 1]);
    for n in 0..HELD {
        let (peer, id) = key(n);
        assert_eq!(t.on_request(now, peer, id, true), Verdict::New);
        t.complete(peer, id, answer.clone());
    }
    t
}

fn dedup(c: &mut Criterion) {
    let now = Instant::now();
    let answer = Bytes::from_static(&[0x60, 0x44, 0, 1]);
    let mut g = c.benchmark_group("coap dedup");
    g.throughput(Throughput::Elements(1));

    let mut table = filled(now);
    let mut n = HELD;
    g.bench_function("new request + complete (table)", |b| {
        b.iter(|| {
            // Keys beyond the held ones: every request is new, and the
            // full table forgets its oldest exchange.
            let (peer, id) = key(n);
            n = n.wrapping_add(1);
            let v = table.on_request(now, peer, id, true);
            table.complete(peer, id, answer.clone());
            black_box(v)
        })
    });

    let mut map: HashMap<(SocketAddr, u16), Bytes> = HashMap::new();
    for m in 0..HELD {
        map.insert(key(m), answer.clone());
    }
    let mut m = HELD;
    g.bench_function("insert + remove the oldest (bare HashMap, baseline)", |b| {
        b.iter(|| {
            let k = key(m);
            let oldest = key(m.wrapping_sub(HELD));
            m = m.wrapping_add(1);
            black_box(map.insert(k, answer.clone()));
            black_box(map.remove(&oldest))
        })
    });
    let map: HashMap<(SocketAddr, u16), Bytes> =
        (0..HELD).map(|m| (key(m), answer.clone())).collect();

    let table = std::cell::RefCell::new(filled(now));
    let mut r = 0u32;
    g.bench_function("retransmission answered (table)", |b| {
        b.iter(|| {
            let (peer, id) = key(r % HELD);
            r = r.wrapping_add(1);
            black_box(table.borrow_mut().on_request(now, peer, id, true))
        })
    });
    let mut r = 0u32;
    g.bench_function("lookup (bare HashMap, baseline)", |b| {
        b.iter(|| {
            let k = key(r % HELD);
            r = r.wrapping_add(1);
            black_box(map.get(&k).cloned())
        })
    });

    g.throughput(Throughput::Elements(u64::from(HELD)));
    g.bench_function("expire 100 000 exchanges (table)", |b| {
        b.iter_batched(
            || filled(now),
            |mut t| black_box(t.expire(now + Duration::from_secs(3600))),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, dedup);
criterion_main!(benches);
