use super::*;
use dispatcher::keys::DeviceRef;
use dispatcher::{BridgeId, LockId};
use rumqttc::mqttbytes::v4::{LastWill, Publish, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::QoS;

const MAX: usize = 4096;

fn session() -> Session {
    Session::new(Login::new("internal", "s3cret-internal"), MAX)
}

fn bytes(write: impl FnOnce(&mut BytesMut) -> Result<usize, CodecError>) -> Vec<u8> {
    let mut b = BytesMut::new();
    write(&mut b).unwrap();
    b.to_vec()
}

fn connect(client_id: &str, login: Option<(&str, &str)>, will: Option<&str>) -> Vec<u8> {
    let mut c = Connect::new(client_id);
    c.login = login.map(|(u, p)| Login::new(u, p));
    c.last_will = will.map(|t| LastWill::new(t, "lost", QoS::AtLeastOnce, false));
    bytes(|b| c.write(b))
}

fn publish(topic: &str) -> Vec<u8> {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, vec![1, 2, 3]);
    p.pkid = 7;
    bytes(|b| p.write(b))
}

fn subscribe(filters: &[&str]) -> Vec<u8> {
    let s = Subscribe::new_many(
        filters
            .iter()
            .map(|f| SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce)),
    );
    let mut s = s;
    s.pkid = 9;
    bytes(|b| s.write(b))
}

fn lock(id: &str) -> Identity {
    Identity::Device(DeviceRef::Lock(LockId::new(id)))
}

fn parse(frame: &[u8]) -> Packet {
    Packet::read(&mut BytesMut::from(frame), MAX).unwrap()
}

/// Connect and authenticate as lock `L1`; returns the session forwarding.
fn forwarding() -> Session {
    let mut s = session();
    s.on_client_bytes(&connect("L1", Some(("L1", "pw")), None));
    s.on_authenticated(Some(lock("L1")));
    s
}

#[test]
fn a_login_is_authenticated_then_forwarded_with_the_internal_credential() {
    let mut s = session();
    let steps = s.on_client_bytes(&connect(
        "B1",
        Some(("B1", "device-pw")),
        Some("br/B1/status"),
    ));
    match &steps[..] {
        [Step::Authenticate(c)] => assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("B1", "device-pw")
        ),
        other => panic!("{other:?}"),
    }
    let bridge = Identity::Device(DeviceRef::Bridge(BridgeId::new("B1")));
    let steps = s.on_authenticated(Some(bridge.clone()));
    let [Step::OpenBroker { identity, connect }] = &steps[..] else {
        panic!("{steps:?}")
    };
    assert_eq!(identity, &bridge);
    let Packet::Connect(c) = parse(connect) else {
        panic!()
    };
    assert_eq!(c.client_id, "B1", "the session keeps its client id");
    assert_eq!(
        c.login,
        Some(Login::new("internal", "s3cret-internal")),
        "the device's password never reaches the broker"
    );
    assert_eq!(c.last_will.unwrap().topic, "br/B1/status");
    assert_eq!(s.identity(), Some(&bridge));
}

#[test]
fn connect_refusals_answer_with_the_mqtt_return_code_then_close() {
    let cases: [(Vec<u8>, ConnectReturnCode, Refusal); 2] = [
        (
            connect("L1", None, None),
            ConnectReturnCode::BadUserNamePassword,
            Refusal::BadCredentials,
        ),
        (
            publish("lk/L1/up/hb"),
            ConnectReturnCode::Success,
            Refusal::NotConnectFirst,
        ),
    ];
    for (input, code, why) in cases {
        let steps = session().on_client_bytes(&input);
        match &steps[..] {
            [Step::ToClient(ack), Step::Close(r)] => {
                assert_eq!(*r, why);
                let Packet::ConnAck(a) = parse(ack) else {
                    panic!()
                };
                assert_eq!(a.code, code, "{why:?}");
            }
            [Step::Close(r)] => assert_eq!(
                (*r, code),
                (why, ConnectReturnCode::Success),
                "no CONNACK before a CONNECT"
            ),
            other => panic!("{why:?}: {other:?}"),
        }
    }
}

#[test]
fn wrong_credentials_and_a_foreign_last_will_are_refused() {
    let mut s = session();
    s.on_client_bytes(&connect("L1", Some(("L1", "wrong")), None));
    let steps = s.on_authenticated(None);
    assert!(
        matches!(
            &steps[..],
            [Step::ToClient(_), Step::Close(Refusal::BadCredentials)]
        ),
        "{steps:?}"
    );
    assert!(
        s.on_client_bytes(&publish("lk/L1/up/hb")).is_empty(),
        "closed for good"
    );

    let mut s = session();
    s.on_client_bytes(&connect("B1", Some(("B1", "pw")), Some("br/B2/status")));
    let steps = s.on_authenticated(Some(Identity::Device(DeviceRef::Bridge(BridgeId::new(
        "B1",
    )))));
    match &steps[..] {
        [Step::ToClient(ack), Step::Close(Refusal::WillTopic)] => {
            let Packet::ConnAck(a) = parse(ack) else {
                panic!()
            };
            assert_eq!(a.code, ConnectReturnCode::NotAuthorized);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn own_publishes_pass_unchanged_and_a_foreign_one_closes_the_connection() {
    let mut s = forwarding();
    let frame = publish("lk/L1/up/hb");
    match &s.on_client_bytes(&frame)[..] {
        [Step::ToBroker(b)] => assert_eq!(&b[..], &frame[..], "forwarded byte for byte"),
        other => panic!("{other:?}"),
    }
    let steps = s.on_client_bytes(&publish("lk/L2/up/hb"));
    assert!(
        matches!(&steps[..], [Step::Close(Refusal::ForeignPublish)]),
        "{steps:?}"
    );
}

#[test]
fn a_subscription_to_everything_is_refused_with_0x80_and_not_forwarded() {
    let mut s = forwarding();
    let steps = s.on_client_bytes(&subscribe(&["lk/L1/ack/+", "#"]));
    match &steps[..] {
        [Step::ToClient(ack), Step::Refused(Refusal::ForeignSubscribe)] => {
            let Packet::SubAck(a) = parse(ack) else {
                panic!()
            };
            assert_eq!(a.pkid, 9);
            assert_eq!(a.return_codes, vec![SubscribeReasonCode::Failure; 2]);
        }
        other => panic!("{other:?}"),
    }
    // The connection goes on: its own subscription passes.
    assert!(matches!(
        &s.on_client_bytes(&subscribe(&["lk/L1/ack/+"]))[..],
        [Step::ToBroker(_)]
    ));
}

#[test]
fn frames_split_and_pipelined_are_handled_in_order() {
    let mut s = session();
    let mut stream = connect("L1", Some(("L1", "pw")), None);
    stream.extend(publish("lk/L1/up/hb"));
    stream.extend(publish("lk/L1/up/log"));
    // Byte by byte: nothing happens until the CONNECT is whole.
    let mut steps = Vec::new();
    for b in &stream {
        steps.extend(s.on_client_bytes(std::slice::from_ref(b)));
    }
    assert!(matches!(&steps[..], [Step::Authenticate(_)]), "{steps:?}");
    // What arrived while authenticating follows the CONNECT, in order.
    let steps = s.on_authenticated(Some(lock("L1")));
    let topics: Vec<String> = steps
        .iter()
        .filter_map(|st| match st {
            Step::ToBroker(b) => match parse(b) {
                Packet::Publish(p) => Some(p.topic),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(matches!(steps[0], Step::OpenBroker { .. }));
    assert_eq!(topics, ["lk/L1/up/hb", "lk/L1/up/log"]);
}

#[test]
fn garbage_oversize_and_a_second_connect_close_the_connection() {
    let steps = session().on_client_bytes(&[0xf0, 0x00]);
    assert!(
        matches!(&steps[..], [Step::Close(Refusal::Malformed)]),
        "reserved packet type: {steps:?}"
    );
    let mut s = forwarding();
    let mut big = Publish::new("lk/L1/up/hb", QoS::AtMostOnce, vec![0; MAX * 2]);
    big.pkid = 0;
    let steps = s.on_client_bytes(&bytes(|b| big.write(b)));
    assert!(
        matches!(&steps[..], [Step::Close(Refusal::TooLarge)]),
        "{steps:?}"
    );
    let mut s = forwarding();
    let steps = s.on_client_bytes(&connect("L1", Some(("L1", "pw")), None));
    assert!(
        matches!(&steps[..], [Step::Close(Refusal::SecondConnect)]),
        "{steps:?}"
    );
}

#[test]
fn an_mqtt_5_connect_is_refused_with_the_version_code() {
    let mut c = Connect::new("L1");
    c.protocol = Protocol::V5;
    c.login = Some(Login::new("L1", "pw"));
    let steps = session().on_client_bytes(&bytes(|b| c.write(b)));
    match &steps[..] {
        [Step::ToClient(ack), Step::Close(Refusal::ProtocolVersion)] => {
            let Packet::ConnAck(a) = parse(ack) else {
                panic!()
            };
            assert_eq!(a.code, ConnectReturnCode::RefusedProtocolVersion);
        }
        // rumqttc's v4 codec may refuse to decode a v5 CONNECT at all.
        [Step::Close(Refusal::Malformed)] => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_device_connects_only_under_its_own_id_the_backend_under_its_name() {
    let lock = || Identity::Device(DeviceRef::Lock(dispatcher::LockId::new("L1")));
    let refused = |client_id: &str, username: &str, identity: Identity| {
        let mut s = session();
        s.on_client_bytes(&connect(client_id, Some((username, "pw")), None));
        let steps = s.on_authenticated(Some(identity));
        match &steps[..] {
            [Step::ToClient(ack), Step::Close(Refusal::ClientIdMismatch)] => {
                let Packet::ConnAck(a) = parse(ack) else {
                    panic!()
                };
                assert_eq!(a.code, ConnectReturnCode::BadClientId);
                true
            }
            [Step::OpenBroker { .. }] => false,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        refused("L2", "L1", lock()),
        "L1 cannot take over L2's session"
    );
    assert!(refused("L1-x", "L1", lock()));
    assert!(!refused("L1", "L1", lock()));
    assert!(!refused("dashboard", "dashboard", Identity::Backend));
    assert!(!refused("dashboard-2", "dashboard", Identity::Backend));
    for id in [
        "dashboard-",
        "dashboardx",
        "gw:devices",
        "dashboard-a:b",
        "L1",
    ] {
        assert!(refused(id, "dashboard", Identity::Backend), "{id}");
    }
}
