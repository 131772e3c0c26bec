//! CPU cost of OSCORE per message on the gateway: the server side of one
//! heartbeat (200-byte payload) from option decode to protected answer, and
//! for scale the client side and a context derivation (what a cache miss
//! costs).
//!
//! Run: `cargo bench -p lockfleet-oscore --bench protect`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lockfleet_oscore::{
    protect_request, protect_response, unprotect_request, InnerMessage, OscoreOption, Params,
    PartialIv, ReplayWindow, SecurityContext, CODE_CHANGED, CODE_POST,
};

/// A heartbeat's CBOR payload size, as the brief for this benchmark fixes.
const HEARTBEAT_BYTES: usize = 200;
/// A small downlink answer (server time, a job id or two).
const ANSWER_BYTES: usize = 32;

const SECRET: [u8; 32] = [0x42; 32];
const LOCK_ID: &[u8] = &[0x4c, 0x01, 0x00, 0x07];
const GATEWAY_ID: &[u8] = &[];

fn context(sender: &[u8], recipient: &[u8]) -> SecurityContext {
    SecurityContext::derive(&Params {
        master_secret: &SECRET,
        master_salt: &[],
        sender_id: sender,
        recipient_id: recipient,
        id_context: None,
    })
    .expect("valid parameters")
}

fn heartbeat_request() -> (Vec<u8>, Vec<u8>) {
    let lock = context(LOCK_ID, GATEWAY_ID);
    let plaintext = InnerMessage {
        code: CODE_POST,
        options: vec![(11, b"hb".to_vec()), (12, vec![60])],
        payload: vec![0xa5; HEARTBEAT_BYTES],
    }
    .encode()
    .expect("encodes");
    let piv = PartialIv::from_seq(123_456).expect("in range");
    let (protected, _) = protect_request(&lock, piv, &plaintext, false, &[]).expect("protects");
    (protected.option, protected.ciphertext)
}

fn server_side(c: &mut Criterion) {
    let gateway = context(GATEWAY_ID, LOCK_ID);
    let (option_bytes, ciphertext) = heartbeat_request();
    let answer = InnerMessage::bare(CODE_CHANGED, vec![0x5a; ANSWER_BYTES]);
    let window = ReplayWindow::from_parts(Some(123_400), 1).expect("valid parts");

    let mut group = c.benchmark_group("server");
    group.throughput(Throughput::Elements(1));
    group.bench_function("heartbeat_200B_unprotect_and_answer", |b| {
        b.iter(|| {
            let mut window = window;
            let option = OscoreOption::decode(black_box(&option_bytes)).expect("decodes");
            let seq = option.partial_iv.expect("request has PIV").seq();
            window.check(seq).expect("fresh");
            let (request, plaintext) =
                unprotect_request(&gateway, &option, black_box(&ciphertext), &[])
                    .expect("verifies");
            window.accept(seq).expect("fresh");
            let inner = InnerMessage::decode(&plaintext).expect("decodes");
            black_box(&inner);
            let response = protect_response(
                &gateway,
                request,
                None,
                &answer.encode().expect("encodes"),
                &[],
            )
            .expect("protects");
            black_box((window, response))
        })
    });
    group.finish();
}

fn client_side(c: &mut Criterion) {
    let lock = context(LOCK_ID, GATEWAY_ID);
    let plaintext = InnerMessage::bare(CODE_POST, vec![0xa5; HEARTBEAT_BYTES])
        .encode()
        .expect("encodes");
    let piv = PartialIv::from_seq(123_456).expect("in range");
    c.bench_function("client/heartbeat_200B_protect_request", |b| {
        b.iter(|| protect_request(&lock, piv, black_box(&plaintext), false, &[]).expect("protects"))
    });
}

fn derivation(c: &mut Criterion) {
    c.bench_function("context/derive", |b| {
        b.iter(|| context(black_box(GATEWAY_ID), black_box(LOCK_ID)))
    });
}

criterion_group!(benches, server_side, client_side, derivation);
criterion_main!(benches);
