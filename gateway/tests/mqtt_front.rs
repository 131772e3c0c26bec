//! The MQTT front over real sockets, in front of a real rumqttd that accepts
//! only the front's internal login: devices log in with their own
//! credentials and are confined to their own topics; a wrong password, a
//! foreign publish, a subscription to `#` and a connection flood are refused
//! and counted; TLS works with a generated certificate. Clients: rumqttc,
//! and Mosquitto's `mosquitto_pub` / `mosquitto_sub`.

use dispatcher::keys::DeviceRef;
use dispatcher::{BridgeId, LockId};
use gateway::keys::password;
use gateway::mqtt::broker;
use gateway::mqtt::front::auth::{Account, Accounts, Authenticator};
use gateway::mqtt::front::policy::Identity;
use gateway::mqtt::front::server::{self, Routes};
use rumqttc::mqttbytes::v4::Login;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode, Transport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that must happen.
const WAIT: Duration = Duration::from_secs(10);

/// Two devices and the backend, with their passwords.
struct Table(Vec<(String, Account)>);

impl Accounts for Table {
    fn accounts(&self, username: &str) -> Vec<Account> {
        self.0
            .iter()
            .filter(|(u, _)| u == username)
            .map(|(_, a)| a.clone())
            .collect()
    }
}

fn table() -> Table {
    let account = |identity, pw: &str| Account {
        identity,
        password_hash: password::hash(pw, password::DEVICE_COST),
    };
    Table(vec![
        (
            "L1".into(),
            account(
                Identity::Device(DeviceRef::Lock(LockId::new("L1"))),
                "pw-L1",
            ),
        ),
        (
            "B1".into(),
            account(
                Identity::Device(DeviceRef::Bridge(BridgeId::new("B1"))),
                "pw-B1",
            ),
        ),
        ("dashboard".into(), account(Identity::Backend, "pw-dash")),
    ])
}

/// A front on an ephemeral port, with a device broker and a backend broker behind it.
struct Front {
    addr: SocketAddr,
    device_broker: SocketAddr,
    internal: Login,
    stop: CancellationToken,
}

impl Front {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Front {
        let internal = Login::new("front-internal", "internal-pw-for-this-test");
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let device_broker = broker::start_with_login(loopback, 1000, Some(&internal), "device")
            .await
            .unwrap();
        let backend_broker = broker::start_with_login(loopback, 1000, Some(&internal), "backend")
            .await
            .unwrap();
        let listener = TcpListener::bind(loopback).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Routes {
            devices: device_broker,
            backend: backend_broker,
            internal: internal.clone(),
            max_packet: broker::MAX_PAYLOAD_BYTES + 1024,
            connect_rate: Default::default(),
        };
        let stop = CancellationToken::new();
        tokio::spawn(server::serve(
            listener,
            tls,
            routes,
            Arc::new(Authenticator::new(Arc::new(table()))),
            stop.clone(),
        ));
        Front {
            addr,
            device_broker,
            internal,
            stop,
        }
    }
}

/// A rumqttc client; returns the client and a channel of what it received.
fn client(
    addr: SocketAddr,
    id: &str,
    login: Option<(&str, &str)>,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    let (c, mut el) = AsyncClient::new(o, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    (c, rx)
}

/// The next received packet matching `pick`, within [`WAIT`].
async fn next<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
    mut pick: impl FnMut(&Result<Packet, String>) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let item = rx.recv().await.expect("client event loop ended");
            if let Some(t) = pick(&item) {
                return t;
            }
        }
    })
    .await
    .expect("the expected packet arrived in time")
}

fn connack(r: &Result<Packet, String>) -> Option<Result<(), String>> {
    match r {
        Ok(Packet::ConnAck(a)) => {
            assert_eq!(a.code, rumqttc::ConnectReturnCode::Success);
            Some(Ok(()))
        }
        Err(e) => Some(Err(e.clone())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_its_credentials_reaches_its_topics_and_nothing_else() {
    let f = Front::start(None).await;
    // The gateway side: an internal client on the device broker.
    let (inside, mut inside_rx) = client(
        f.device_broker,
        "gateway",
        Some((&f.internal.username, &f.internal.password)),
    );
    next(&mut inside_rx, connack).await.unwrap();
    inside
        .subscribe("lk/+/up/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    next(&mut inside_rx, |r| {
        matches!(r, Ok(Packet::SubAck(_))).then_some(())
    })
    .await;

    let (l1, mut l1_rx) = client(f.addr, "L1", Some(("L1", "pw-L1")));
    next(&mut l1_rx, connack).await.unwrap();
    l1.subscribe("lk/L1/ack/+", QoS::AtLeastOnce).await.unwrap();
    let ok = next(&mut l1_rx, |r| match r {
        Ok(Packet::SubAck(a)) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ok, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    l1.publish("lk/L1/up/hb", QoS::AtLeastOnce, false, vec![1, 2, 3])
        .await
        .unwrap();
    let got = next(&mut inside_rx, |r| match r {
        Ok(Packet::Publish(p)) => Some((p.topic.clone(), p.payload.to_vec())),
        _ => None,
    })
    .await;
    assert_eq!(got, ("lk/L1/up/hb".to_string(), vec![1, 2, 3]));
    // Answers flow back through the front.
    inside
        .publish("lk/L1/ack/hb", QoS::AtLeastOnce, false, vec![9])
        .await
        .unwrap();
    let ack = next(&mut l1_rx, |r| match r {
        Ok(Packet::Publish(p)) => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    assert_eq!(ack, vec![9]);

    // Subscribing to everything: refused with 0x80, the connection goes on.
    l1.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let refused = next(&mut l1_rx, |r| match r {
        Ok(Packet::SubAck(a)) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(refused, vec![SubscribeReasonCode::Failure]);
    // Publishing as another lock: the front closes the connection.
    l1.publish("lk/L2/up/hb", QoS::AtLeastOnce, false, vec![6])
        .await
        .unwrap();
    let closed = next(&mut l1_rx, |r| r.as_ref().err().cloned()).await;
    assert!(!closed.is_empty());
    // ...and the forged publish never reached the broker.
    assert!(tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(Ok(Packet::Publish(p))) = inside_rx.recv().await {
                return p.topic;
            }
        }
    })
    .await
    .is_err());
    f.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_a_foreign_client_id_and_anonymous_clients_are_refused_at_connect() {
    let f = Front::start(None).await;
    for (id, login) in [
        ("L1", Some(("L1", "wrong"))),
        ("L1", None),
        ("B1", Some(("L1", "pw-L1"))),
        ("L9", Some(("L9", "pw-L1"))),
    ] {
        let (_c, mut rx) = client(f.addr, id, login);
        let outcome = next(&mut rx, |r| match r {
            Ok(Packet::ConnAck(a)) => Some(Ok(a.code)),
            Err(e) => Some(Err(e.clone())),
            _ => None,
        })
        .await;
        assert!(outcome.is_err(), "{id} {login:?}: refused, got {outcome:?}");
    }
    // The dashboard backend's login is routed to the backend broker, where no device topic exists.
    let (dash, mut rx) = client(f.addr, "dashboard", Some(("dashboard", "pw-dash")));
    next(&mut rx, connack).await.unwrap();
    dash.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let codes = next(&mut rx, |r| match r {
        Ok(Packet::SubAck(a)) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    f.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_behind_the_front_refuse_anyone_without_the_internal_login() {
    let f = Front::start(None).await;
    let (_c, mut rx) = client(f.device_broker, "L1", Some(("L1", "pw-L1")));
    let outcome = next(&mut rx, |r| match r {
        Ok(Packet::ConnAck(a)) => Some(Ok(a.code)),
        Err(e) => Some(Err(e.clone())),
        _ => None,
    })
    .await;
    assert!(
        outcome.is_err(),
        "a device's own login does not open the broker: {outcome:?}"
    );
    f.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_cut_to_the_rate() {
    let f = Front::start(None).await;
    // Far more connection attempts than the burst allows, as fast as possible.
    let attempts = (gateway::mqtt::front::rate::BURST as usize) * 3;
    let mut open = Vec::new();
    for _ in 0..attempts {
        if let Ok(s) = tokio::net::TcpStream::connect(f.addr).await {
            open.push(s);
        }
    }
    // Refused ones are closed at once: reading gives EOF without any bytes.
    let mut closed = 0;
    for s in &mut open {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::io::AsyncReadExt::read(s, &mut b),
        )
        .await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= attempts - gateway::mqtt::front::rate::BURST as usize - 5,
        "{closed} of {attempts} closed"
    );
    f.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_front_works_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let acceptor = gateway::mqtt::front::tls::acceptor(&cert_path, &key_path).unwrap();
    let f = Front::start(Some(acceptor)).await;

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut o = MqttOptions::new("L1", "localhost", f.addr.port());
    o.set_credentials("L1", "pw-L1");
    o.set_transport(Transport::tls_with_config(tls.into()));
    let (_c, mut el) = AsyncClient::new(o, 10);
    let ack = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(a)) =
                el.poll().await.expect("TLS connection works")
            {
                return a;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);

    // Plain MQTT on the TLS port gets nowhere.
    let (_c, mut rx) = client(f.addr, "L1", Some(("L1", "pw-L1")));
    let outcome = next(&mut rx, |r| match r {
        Ok(Packet::ConnAck(a)) => Some(Ok(a.code)),
        Err(e) => Some(Err(e.clone())),
        _ => None,
    })
    .await;
    assert!(outcome.is_err(), "{outcome:?}");
    // A bad key file is named.
    std::fs::write(&key_path, "not a key").unwrap();
    let err = gateway::mqtt::front::tls::acceptor(&cert_path, &key_path)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("key.pem"), "{err}");
    f.stop.cancel();
}

/// Mosquitto's own clients through the front: `mosquitto_sub` with a
/// device's login receives its answers; `mosquitto_pub` with a wrong
/// password is refused and with the right one gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_are_authenticated_and_confined_too() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let f = Front::start(None).await;
    let (inside, mut inside_rx) = client(
        f.device_broker,
        "gateway",
        Some((&f.internal.username, &f.internal.password)),
    );
    next(&mut inside_rx, connack).await.unwrap();
    inside
        .subscribe("lk/+/up/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    next(&mut inside_rx, |r| {
        matches!(r, Ok(Packet::SubAck(_))).then_some(())
    })
    .await;
    let port = f.addr.port().to_string();

    let pub_with = |pw: &str| {
        let mut c = tokio::process::Command::new("mosquitto_pub");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "L1",
            "-u",
            "L1",
            "-P",
            pw,
            "-q",
            "1",
            "-t",
            "lk/L1/up/hb",
            "-m",
            "hello",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        c
    };
    let refused = tokio::time::timeout(WAIT, pub_with("wrong").output())
        .await
        .unwrap()
        .expect("mosquitto_pub runs (Debian package mosquitto-clients; bash .ci/run installs it)");
    assert!(!refused.status.success(), "a wrong password is refused");
    let sent = tokio::time::timeout(WAIT, pub_with("pw-L1").output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let got = next(&mut inside_rx, |r| match r {
        Ok(Packet::Publish(p)) => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    assert_eq!(got, b"hello");

    // mosquitto_sub as lock L1 on everything: the front refuses the subscription.
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "L1",
            "-u",
            "L1",
            "-P",
            "pw-L1",
            "-t",
            "#",
            "-d",
            "-W",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let granted = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("Subscribed (mid: 1): ") {
                return rest.trim().to_string();
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert_eq!(granted, "128", "0x80: refused");
    let _ = sub.kill().await;
    f.stop.cancel();
}
