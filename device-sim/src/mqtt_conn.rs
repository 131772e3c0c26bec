//! One device's MQTT connection (rumqttc) and the task that polls its event
//! loop. It follows CRATE-NOTES: a stable client id with `clean_session =
//! false`, resubscribe on every ConnAck, sleep before reconnecting after an
//! error. In a secure run the device logs in with its id and the password
//! derived from its pairing secret ([`Credentials`]); the client id is the
//! same id, as the gateway requires. For bridges it also keeps the status topic: `online` after each
//! ConnAck, `offline` before a clean disconnect, and the Last Will `lost`
//! (as `spec/asyncapi.yaml` specifies) when the connection drops.
//!
//! A bridge can also be taken offline and back on command (a watch of
//! whether it should be online): the same goodbye as at shutdown, then no
//! reconnecting until it should be online again.
//!
//! The task does I/O only: it forwards what arrives to the
//! [`MqttFleet`](crate::mqtt_fleet::MqttFleet) over a bounded channel and
//! never decides anything about reports.

use crate::security::Credentials;
use crate::stats::Stats;
use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Keep-alive of device connections (the brief: 30 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Pause before reconnecting after an error: rumqttc would retry at once
/// (upstream #918) and hammer a gateway that is down.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// First connections are spread over this much time so a fleet does not
/// connect in one burst.
pub const CONNECT_SPREAD: Duration = Duration::from_millis(500);
/// How long a connection may take to say goodbye at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Requests (publishes, subscribes) queued towards one connection; a full
/// queue makes `try_publish` fail, which the ack timeout then covers.
pub const REQUEST_CAPACITY: usize = 32;

/// Device connections send at once (TCP_NODELAY), as the gateway's MQTT
/// front and Mosquitto (`set_tcp_nodelay`) do on their side; rumqttc's
/// default is Nagle's algorithm. With it, a device that answers the
/// gateway's QoS 1 ack with a PUBACK and then publishes its next report
/// sends two small segments back to back, and the second waits for the
/// ACK of the first, which the broker delays up to 40 ms (delayed ACK)
/// when it has nothing to send back: 40 ms per report, measured with
/// `loadtest bridges`, where a plain broker (no ack publish, no PUBACK
/// from the device) loses nothing.
pub const TCP_NODELAY: bool = true;

/// Payload of a bridge's status topic when it is connected.
pub const STATUS_ONLINE: &str = "online";
/// Payload of a bridge's status topic just before a clean disconnect.
pub const STATUS_OFFLINE: &str = "offline";
/// The bridge's Last Will, published by the broker when the connection drops
/// (`spec/asyncapi.yaml` `x-last-will`, and what the gateway maps to
/// `ConnectivityCause::LastWill`).
pub const STATUS_LOST: &str = "lost";

/// What a connection is and what it subscribes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnSpec {
    /// The lock or bridge id.
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    /// Filters subscribed after every ConnAck.
    pub filters: Vec<String>,
    /// Bridges: where `online`/`offline` and the Last Will go.
    pub status_topic: Option<String>,
    /// The login; `None`: anonymous (a gateway run with `--insecure-dev`).
    pub credentials: Option<Credentials>,
    /// Report the packet id of every publish that leaves and every PUBACK
    /// ([`ConnEvent::Published`], [`ConnEvent::PubAck`]), so the fleet can
    /// time or settle reports by their PUBACK ([`crate::run::MqttAcks`]).
    pub track_pubacks: bool,
}

/// What a connection task reports to the fleet.
#[derive(Debug)]
pub enum ConnEvent {
    /// Connected and subscribed: reports may flow.
    Up { conn: usize },
    /// The connection dropped; rumqttc will reconnect.
    Down { conn: usize },
    /// The connection was closed on command ([`drive`]'s `online` false)
    /// and stays closed until told otherwise.
    Parked { conn: usize },
    /// A publish arrived on one of the filters.
    Message {
        conn: usize,
        topic: String,
        payload: Vec<u8>,
    },
    /// A QoS 1 publish left for the first time with packet id `pkid`
    /// (resends of the session's unacknowledged ones after a reconnection
    /// are not reported again). With [`ConnSpec::track_pubacks`] only.
    Published { conn: usize, pkid: u16 },
    /// The broker acknowledged packet id `pkid` (MQTT 3.1.1 §3.4). With
    /// [`ConnSpec::track_pubacks`] only.
    PubAck { conn: usize, pkid: u16 },
}

impl ConnSpec {
    /// rumqttc options: client id = device id, keep-alive, persistent session,
    /// the login if any, and for bridges the Last Will.
    pub fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_session(false);
        if let Some(c) = &self.credentials {
            o.set_credentials(c.username.clone(), c.password());
        }
        if let Some(topic) = &self.status_topic {
            o.set_last_will(LastWill::new(
                topic.clone(),
                STATUS_LOST.as_bytes().to_vec(),
                QoS::AtLeastOnce,
                false,
            ));
        }
        o
    }

    /// The client handle and event loop of this connection (nothing is sent
    /// until [`drive`] polls the loop).
    pub fn connect(&self) -> (AsyncClient, EventLoop) {
        let (client, mut eventloop) = AsyncClient::new(self.options(), REQUEST_CAPACITY);
        eventloop.network_options.set_tcp_nodelay(TCP_NODELAY);
        (client, eventloop)
    }
}

/// Polls one connection until `stop` is cancelled, then says goodbye
/// (bridges publish `offline`) and disconnects.
///
/// `online` false (a bridge taken offline on command) says goodbye the same
/// way and then parks the connection: no reconnecting, and
/// [`ConnEvent::Parked`] once it is closed; back to true, it connects again
/// (resuming its persistent session) and goes on as after any ConnAck.
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    conn: usize,
    spec: ConnSpec,
    client: AsyncClient,
    mut eventloop: EventLoop,
    events: tokio::sync::mpsc::Sender<ConnEvent>,
    stop: CancellationToken,
    stats: Arc<Stats>,
    mut online: watch::Receiver<bool>,
) {
    let spread = rand::rng().random_range(Duration::ZERO..=CONNECT_SPREAD);
    tokio::select! {
        _ = tokio::time::sleep(spread) => {}
        _ = stop.cancelled() => return,
    }
    let mut up = false;
    // A ConnAck came on the current network connection.
    let mut connected = false;
    let mut goodbye_by: Option<Instant> = None;
    // Going offline on command: the goodbye is out, waiting for the close.
    let mut leaving_by: Option<Instant> = None;
    let mut pubacks = spec.track_pubacks.then(PubackWatch::default);
    loop {
        let offline_wanted = !*online.borrow_and_update();
        if offline_wanted && leaving_by.is_none() && goodbye_by.is_none() {
            if connected {
                say_goodbye(&spec, &client);
                leaving_by = Some(Instant::now() + SHUTDOWN_GRACE);
            } else if !park(
                conn,
                &mut eventloop,
                &events,
                &stop,
                &stats,
                &mut online,
                &mut up,
            )
            .await
            {
                break;
            } else {
                continue;
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled(), if goodbye_by.is_none() => {
                goodbye_by = Some(Instant::now() + SHUTDOWN_GRACE);
                if leaving_by.is_none() {
                    say_goodbye(&spec, &client);
                }
            }
            _ = sleep_until(goodbye_by) => break,
            // The broker did not close the connection in time: close it.
            _ = sleep_until(leaving_by), if goodbye_by.is_none() => {
                leaving_by = None;
                connected = false;
                if !park(conn, &mut eventloop, &events, &stop, &stats, &mut online, &mut up).await {
                    break;
                }
            }
            // The fleet task is gone only when the run is: stop too.
            changed = online.changed(), if leaving_by.is_none() && goodbye_by.is_none() => {
                if changed.is_err() {
                    break;
                }
            }
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected = true;
                    if let Some(w) = pubacks.as_mut() {
                        w.subscribed = false;
                    }
                    tracing::debug!(client = %spec.client_id, session_present = ack.session_present, "connected");
                    // rumqttc does not resubscribe (upstream #250).
                    let filters = spec.filters.iter().map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::debug!(client = %spec.client_id, error = %e, "cannot queue subscribe");
                    }
                    if let (Some(topic), None, None) = (&spec.status_topic, goodbye_by, leaving_by) {
                        let queued = client.try_publish(topic.clone(), QoS::AtLeastOnce, false, STATUS_ONLINE);
                        if let (Ok(()), Some(w)) = (queued, pubacks.as_mut()) {
                            w.status_out = false;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(w) = pubacks.as_mut() {
                        w.subscribed = true;
                    }
                    // Tracking: `Up` (after which the fleet publishes) waits
                    // for the `online` status to have left, so every publish
                    // the fleet is told of before it is not the fleet's.
                    let status_out = pubacks.as_ref().is_none_or(|w| w.status_out || spec.status_topic.is_none());
                    if !up && leaving_by.is_none() && status_out {
                        up = true;
                        stats.mqtt_connected_add(1);
                        if events.send(ConnEvent::Up { conn }).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = ConnEvent::Message { conn, topic: p.topic, payload: p.payload.to_vec() };
                    if events.send(msg).await.is_err() {
                        break;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    let Some(w) = pubacks.as_mut() else { continue };
                    // A resend of the session's unacknowledged publishes
                    // after a reconnection keeps its packet id.
                    if !w.unacked.insert(pkid) {
                        continue;
                    }
                    let now_up = !w.status_out && w.subscribed && !up && leaving_by.is_none();
                    w.status_out = true;
                    if events.send(ConnEvent::Published { conn, pkid }).await.is_err() {
                        break;
                    }
                    if now_up {
                        up = true;
                        stats.mqtt_connected_add(1);
                        if events.send(ConnEvent::Up { conn }).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let Some(w) = pubacks.as_mut() else { continue };
                    w.unacked.remove(&ack.pkid);
                    if events.send(ConnEvent::PubAck { conn, pkid: ack.pkid }).await.is_err() {
                        break;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) if goodbye_by.is_some() => break,
                Ok(_) => {}
                Err(e) => {
                    connected = false;
                    if let Some(w) = pubacks.as_mut() {
                        w.subscribed = false;
                        w.status_out = true;
                    }
                    if goodbye_by.is_some() {
                        break;
                    }
                    if leaving_by.take().is_some() {
                        // The broker closed the connection after our
                        // DISCONNECT, the acks of what we sent before it
                        // read: the goodbye is complete.
                        if !park(conn, &mut eventloop, &events, &stop, &stats, &mut online, &mut up).await {
                            break;
                        }
                        continue;
                    }
                    if up {
                        up = false;
                        stats.mqtt_connected_add(-1);
                        let _ = events.send(ConnEvent::Down { conn }).await;
                    }
                    tracing::debug!(client = %spec.client_id, error = %e, "mqtt connection error; reconnecting");
                    stats.error("mqtt_connection");
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                        changed = online.changed() => if changed.is_err() { break },
                        _ = stop.cancelled() => break,
                    }
                }
            }
        }
    }
    if up {
        stats.mqtt_connected_add(-1);
    }
}

/// Bridges publish `offline` first; then a clean DISCONNECT, so the broker
/// drops the Last Will.
fn say_goodbye(spec: &ConnSpec, client: &AsyncClient) {
    if let Some(topic) = &spec.status_topic {
        let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, false, STATUS_OFFLINE);
    }
    let _ = client.try_disconnect();
}

/// Closes the connection, tells the fleet ([`ConnEvent::Parked`]) and waits
/// until `online` turns true again (true) or the run stops (false). What
/// was not acknowledged yet is sent again once the session resumes.
async fn park(
    conn: usize,
    eventloop: &mut EventLoop,
    events: &tokio::sync::mpsc::Sender<ConnEvent>,
    stop: &CancellationToken,
    stats: &Stats,
    online: &mut watch::Receiver<bool>,
    up: &mut bool,
) -> bool {
    eventloop.clean();
    if std::mem::take(up) {
        stats.mqtt_connected_add(-1);
    }
    if events.send(ConnEvent::Parked { conn }).await.is_err() {
        return false;
    }
    tokio::select! {
        back = online.wait_for(|wanted| *wanted) => back.is_ok(),
        _ = stop.cancelled() => false,
    }
}

/// What a connection tracking PUBACKs keeps ([`ConnSpec::track_pubacks`]).
#[derive(Debug)]
struct PubackWatch {
    /// Packet ids that left and are not acknowledged yet: one leaving again
    /// is a resend after a reconnection, not a new publish.
    unacked: HashSet<u16>,
    /// The SUBACK after the latest CONNACK came.
    subscribed: bool,
    /// No `online` status of the latest CONNACK is still waiting to leave.
    status_out: bool,
}

impl Default for PubackWatch {
    fn default() -> Self {
        PubackWatch {
            unacked: HashSet::new(),
            subscribed: false,
            status_out: true,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
