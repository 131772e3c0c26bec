//! Differential tests against the crates.io `oscore` 0.1.2 crate, an
//! independent RFC 8613 implementation, within its limits (16-byte master
//! secret, salt and ID Context of at most 8 bytes, at most 128 bytes of
//! options and of payload). For random contexts and messages:
//!
//! * ours and theirs produce the same request bytes for the same sequence
//!   number;
//! * ours protects, theirs unprotects, in both roles;
//! * theirs protects, ours unprotects, in both roles, with and without a
//!   Partial IV in the response.

use std::collections::HashMap;

use lockfleet_oscore::{
    protect_request, protect_response, unprotect_request, unprotect_response, InnerMessage,
    OscoreOption, Params, PartialIv, SecurityContext, MAX_ID_LEN,
};
use oscore::{Context, ContextId, SenderSequenceState, SenderStateStore};
use proptest::collection::vec;
use proptest::prelude::*;

/// The durable sender store `oscore` requires; in memory for the test.
#[derive(Default)]
struct MemStore(HashMap<[u8; 32], SenderSequenceState>);

impl SenderStateStore for MemStore {
    type Error = std::convert::Infallible;

    fn load(&mut self, id: &ContextId) -> Result<Option<SenderSequenceState>, Self::Error> {
        Ok(self.0.get(id.as_bytes()).copied())
    }

    fn compare_exchange(
        &mut self,
        id: &ContextId,
        expected: Option<SenderSequenceState>,
        next: SenderSequenceState,
    ) -> Result<bool, Self::Error> {
        if self.0.get(id.as_bytes()).copied() != expected {
            return Ok(false);
        }
        self.0.insert(*id.as_bytes(), next);
        Ok(true)
    }
}

#[derive(Debug, Clone)]
struct Case {
    secret: [u8; 16],
    salt: Vec<u8>,
    id_context: Option<Vec<u8>>,
    client_id: Vec<u8>,
    server_id: Vec<u8>,
    seq: u64,
    request: InnerMessage,
    response: InnerMessage,
}

fn options() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    // Uri-Path, Content-Format, Uri-Query, Accept and an unknown option;
    // small enough to stay within the oracle's 128-byte option buffer.
    let number = prop_oneof![Just(11u16), Just(12), Just(15), Just(17), Just(2049)];
    vec((number, vec(any::<u8>(), 0..12)), 0..4)
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<[u8; 16]>(),
        vec(any::<u8>(), 0..=8),
        proptest::option::of(vec(any::<u8>(), 0..=8)),
        (
            vec(any::<u8>(), 0..=MAX_ID_LEN),
            vec(any::<u8>(), 0..=MAX_ID_LEN),
        )
            .prop_filter("ids must differ", |(a, b)| a != b),
        prop_oneof![0..1000u64, 0..(1u64 << 40) - 1],
        (1..=4u8, options(), vec(any::<u8>(), 0..=128)),
        (
            prop_oneof![Just(0x41u8), Just(0x44), Just(0x45), Just(0x84), Just(0xa0)],
            options(),
            vec(any::<u8>(), 0..=128),
        ),
    )
        .prop_map(
            |(secret, salt, id_context, (client_id, server_id), seq, req, resp)| Case {
                secret,
                salt,
                id_context,
                client_id,
                server_id,
                seq,
                request: sorted(InnerMessage {
                    code: req.0,
                    options: req.1,
                    payload: req.2,
                }),
                response: sorted(InnerMessage {
                    code: resp.0,
                    options: resp.1,
                    payload: resp.2,
                }),
            },
        )
}

/// Options in encoding order, so a decoded message compares equal.
fn sorted(mut m: InnerMessage) -> InnerMessage {
    m.options.sort_by_key(|(number, _)| *number);
    m
}

/// The CoAP-encoded options alone: what `oscore` takes as `class_e_options`.
fn option_bytes(m: &InnerMessage) -> Vec<u8> {
    let bare = InnerMessage {
        code: m.code,
        options: m.options.clone(),
        payload: vec![],
    };
    bare.encode().expect("encodes")[1..].to_vec()
}

fn ours(c: &Case, client: bool) -> SecurityContext {
    let (sender, recipient) = if client {
        (&c.client_id, &c.server_id)
    } else {
        (&c.server_id, &c.client_id)
    };
    SecurityContext::derive(&Params {
        master_secret: &c.secret,
        master_salt: &c.salt,
        sender_id: sender,
        recipient_id: recipient,
        id_context: c.id_context.as_deref(),
    })
    .expect("valid parameters")
}

fn theirs(c: &Case, client: bool) -> Context {
    let (sender, recipient) = if client {
        (&c.client_id, &c.server_id)
    } else {
        (&c.server_id, &c.client_id)
    };
    Context::new(
        &c.secret,
        Some(&c.salt),
        c.id_context.as_deref(),
        sender,
        recipient,
    )
    .expect("within the oracle's limits")
}

/// Their client, resumed at sequence number `seq` from its store.
fn their_client(c: &Case, store: &mut MemStore) -> Context {
    let ctx = theirs(c, true);
    store.0.insert(
        *ctx.context_id().as_bytes(),
        SenderSequenceState {
            next_sequence: c.seq,
            exhausted: false,
        },
    );
    ctx.restore_existing(store).expect("restores")
}

/// Their server, freshly registered (which allows responses without PIV).
fn their_server(c: &Case, store: &mut MemStore) -> Context {
    theirs(c, false).register_fresh(store).expect("registers")
}

fn decoded(code: u8, options: &[u8], payload: &[u8]) -> InnerMessage {
    let mut plaintext = vec![code];
    plaintext.extend_from_slice(options);
    if !payload.is_empty() {
        plaintext.push(0xff);
        plaintext.extend_from_slice(payload);
    }
    InnerMessage::decode(&plaintext).expect("oracle plaintext decodes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Our client's request equals theirs byte for byte; their server
    /// accepts it; our client accepts their server's response, with and
    /// without the server's own Partial IV.
    #[test]
    fn ours_protects_theirs_unprotects(c in case(), own_piv in any::<bool>()) {
        let client = ours(&c, true);
        let piv = PartialIv::from_seq(c.seq).expect("in range");
        let plaintext = c.request.encode().expect("encodes");
        let (protected, request) =
            protect_request(&client, piv, &plaintext, c.id_context.is_some(), &[]).expect("protects");

        let mut store = MemStore::default();
        let mut oracle_client = their_client(&c, &mut store);
        let (their_ct, their_opt) = oracle_client
            .reserve_sender(&mut store)
            .expect("reserves")
            .protect_request(c.request.code, &option_bytes(&c.request), &c.request.payload)
            .expect("oracle protects");
        prop_assert_eq!(&protected.option[..], &their_opt[..]);
        prop_assert_eq!(&protected.ciphertext[..], &their_ct[..]);

        let mut server_store = MemStore::default();
        let mut server = their_server(&c, &mut server_store);
        let (code, opts, payload) = server
            .unprotect_request(&protected.option, &protected.ciphertext)
            .expect("oracle accepts our request");
        prop_assert_eq!(decoded(code, &opts, &payload), c.request.clone());

        let response_options = option_bytes(&c.response);
        let (resp_ct, resp_opt) = if own_piv {
            server
                .reserve_sender(&mut server_store)
                .expect("reserves")
                .protect_response_with_piv(
                    c.response.code,
                    &response_options,
                    &c.response.payload,
                    &c.client_id,
                    piv.as_bytes(),
                )
                .expect("oracle protects the response with its own PIV")
        } else {
            server
                .protect_response(
                    c.response.code,
                    &response_options,
                    &c.response.payload,
                    &c.client_id,
                    piv.as_bytes(),
                    false,
                )
                .expect("oracle protects the response")
        };
        prop_assert_eq!(resp_opt.is_empty(), !own_piv);
        let option = OscoreOption::decode(&resp_opt).expect("oracle option decodes");
        let plaintext = unprotect_response(&client, &request, &option, &resp_ct, &[])
            .expect("we accept the oracle's response");
        prop_assert_eq!(InnerMessage::decode(&plaintext), Ok(c.response.clone()));
    }

    /// Their client's request verifies with our server; their client
    /// accepts our responses, with and without our own Partial IV.
    #[test]
    fn theirs_protects_ours_unprotects(c in case(), own_piv in any::<bool>()) {
        let mut store = MemStore::default();
        let mut oracle_client = their_client(&c, &mut store);
        let (their_ct, their_opt) = oracle_client
            .reserve_sender(&mut store)
            .expect("reserves")
            .protect_request(c.request.code, &option_bytes(&c.request), &c.request.payload)
            .expect("oracle protects");

        let server = ours(&c, false);
        let option = OscoreOption::decode(&their_opt).expect("oracle option decodes");
        let (request, plaintext) =
            unprotect_request(&server, &option, &their_ct, &[]).expect("we accept the oracle's request");
        prop_assert_eq!(InnerMessage::decode(&plaintext), Ok(c.request.clone()));
        prop_assert_eq!(request.piv().seq(), c.seq);
        let request_piv = request.piv();

        let server_piv = own_piv.then(|| PartialIv::from_seq(c.seq / 2).expect("in range"));
        let response = protect_response(&server, request, server_piv, &c.response.encode().expect("encodes"), &[])
            .expect("protects");
        let (code, opts, payload) = oracle_client
            .unprotect_response(&response.option, &response.ciphertext, request_piv.as_bytes())
            .expect("oracle accepts our response");
        prop_assert_eq!(decoded(code, &opts, &payload), c.response.clone());
    }
}
