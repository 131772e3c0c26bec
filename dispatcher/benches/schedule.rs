//! The heartbeat schedule on the hot path: every heartbeat answer carries
//! the lock's next wake-up, `schedule::next_wake_ms` (its phase from a
//! stable hash of the lock id, so a fleet spreads over the interval).
//! Baseline in the same run: the naive schedule, `at + interval`, which does
//! not spread a fleet powered on together (see BENCHMARKS.md, wake-up phases).
//!
//! Run: `cargo bench -p dispatcher --bench schedule`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dispatcher::schedule::next_wake_ms;
use schemas::HeartbeatInterval;
use std::hint::black_box;

fn schedule(c: &mut Criterion) {
    let ids: Vec<String> = (0..10_000).map(|i| format!("L{i:06}")).collect();
    let interval = HeartbeatInterval::DEFAULT;
    let at_ms = 1_790_000_000_000u64;
    let mut g = c.benchmark_group("next wake");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("phased (next_wake_ms), 10 000 locks", |b| {
        b.iter(|| {
            ids.iter()
                .map(|id| next_wake_ms(black_box(id), black_box(at_ms), interval))
                .fold(0u64, u64::wrapping_add)
        })
    });
    g.bench_function("naive (at + interval, baseline), 10 000 locks", |b| {
        b.iter(|| {
            ids.iter()
                .map(|id| {
                    black_box(id);
                    black_box(at_ms) + interval.as_secs() * 1000
                })
                .fold(0u64, u64::wrapping_add)
        })
    });
    g.finish();
}

criterion_group!(benches, schedule);
criterion_main!(benches);
