//! The load the dashboards are proven on: a `gateway serve` process over
//! SQLite with the webhook 2FA notifier pointed at the simulator's SMS
//! inbox, the simulator's fleet reporting on its schedule (CoAP and MQTT
//! locks, bridges, 5 % duplicated and 2 % lost packets), and on top of it
//! what an operator's day holds: jobs completed at a heartbeat and through
//! a bridge, a hard reset failing a job, a refused command, a bridge going
//! offline and back, 2FA people opening doors, a wrong OTP, a wrong
//! passcode, a lock-out and its clearing, the SMS provider failing, garbage
//! and unprotected datagrams, a wrong MQTT password, and a lock that was
//! last heard long ago (overdue, low battery, retention) coming back.

use crate::common::process::GatewayProcess;
use crate::common::{now_s, request, CoapClient, Dashboard, JobLock};
use coap_lite::RequestType;
use device_sim::fleet::{generate, Fleet, FleetSpec};
use device_sim::net::NetFaults;
use device_sim::phone::{InboxMode, SmsInbox};
use device_sim::run::{self, RunHandle, SimConfig};
use device_sim::twofa::{InboxSource, TwoFactorPerson, TwoFactorSim, VisitEnd, VisitPlan};
use device_sim::Reporting;
use dispatcher::import::ParsedFleet;
use dispatcher::registry::{LockRecord, ReportPath};
use dispatcher::LockId;
use gateway::store::testing::{registration, TestDb};
use gateway::store::{Batch, Store};
use schemas::twofa::TwoFactorResult;
use schemas::{Battery, BatteryLevel, HeartbeatInterval, LockModel};
use serde_json::{json, Value};
use std::time::Duration;
use zeroize::Zeroizing;

/// The lock registered but left out of the simulation: last heard long
/// ago with a low battery, so overdue; heard again near the end.
const LATE_LOCK: &str = "L990001";
/// How long a lock's conversation may take (retransmissions included).
const TALK: Duration = Duration::from_secs(30);
/// Long enough for the gauges counted in the database every 15 s
/// (`gateway::server::ONLINE_REFRESH`) to be counted, and scraped, once
/// with what the scenario left in place, with seconds to spare on a busy
/// machine.
const GAUGE_REFRESH_WAIT: Duration = Duration::from_secs(20);

/// Everything the scenario runs, to stop in order.
pub struct World {
    pub gateway: GatewayProcess,
    /// The simulated fleet, once [`World::start_devices`] started it.
    sim: Option<RunHandle>,
    pub dash: Dashboard,
    pub inbox: SmsInbox,
    db: TestDb,
    _dir: tempfile::TempDir,
    fleet: Fleet,
    parsed: ParsedFleet,
    people: Vec<TwoFactorPerson>,
    /// The lock the heartbeat jobs go to.
    job_lock: String,
    org: String,
    keys: u32,
}

fn local(zone: &str, secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    t.to_zoned_datetime(jiff::tz::TimeZone::get(zone).unwrap())
        .datetime()
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

fn now_ms() -> u64 {
    now_s() * 1000
}

impl World {
    /// Register the fleet, start the gateway; the simulator starts in
    /// [`World::start_devices`], once Prometheus watches.
    pub async fn start() -> World {
        let mut fleet = generate(&FleetSpec {
            locks: 24,
            bridges: 3,
            orgs: 1,
            mqtt_share: 0.3,
            seed: 41,
        })
        .unwrap();
        // Two unbridged CoAP NB-IoT locks become 2FA models.
        let twofa: Vec<usize> = fleet
            .locks
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.model.is_nb_iot()
                    && l.bridge_id.is_none()
                    && l.transport == schemas::event::Transport::Coap
            })
            .map(|(i, _)| i)
            .skip(1)
            .take(2)
            .collect();
        assert_eq!(twofa.len(), 2, "the fleet has three unbridged CoAP locks");
        for &i in &twofa {
            fleet.locks[i].model = LockModel::Inb1TwoFactor;
        }
        // The lock that takes jobs at its heartbeat hears them only when
        // the scenario says: its own next heartbeat is 24 h (12 minutes at
        // the run's speed-up) after the first.
        let job_lock = fleet
            .locks
            .iter()
            .position(|l| {
                l.model == LockModel::Inb1
                    && l.bridge_id.is_none()
                    && l.transport == schemas::event::Transport::Coap
                    && l.departments.len() <= 1
            })
            .expect("an unbridged CoAP INB1 in at most one department");
        fleet.locks[job_lock].heartbeat_interval = HeartbeatInterval::from_hours(24).unwrap();
        let job_lock = fleet.locks[job_lock].id.clone();
        let mut csv = Vec::new();
        fleet.write_to(&mut csv).unwrap();
        let mut parsed =
            dispatcher::import::read_fleet(&csv[..], &dispatcher::Registry::default()).unwrap();
        let template = parsed.locks[0].clone();
        let org = template.record.org.to_string();
        parsed.locks.push(registration(LockRecord {
            id: LockId::new(LATE_LOCK),
            model: LockModel::Inb1,
            departments: template
                .record
                .departments
                .iter()
                .take(1)
                .cloned()
                .collect(),
            heartbeat_interval: HeartbeatInterval::from_hours(1).unwrap(),
            bridge: None,
            path: ReportPath::Coap,
            ..template.record
        }));

        let db = TestDb::sqlite().await;
        let store = Store::open(&db.url).await.unwrap();
        gateway::store::testing::register(&store, &parsed).await;
        // The late lock was last heard 100 days ago with a low battery:
        // overdue at once, and its heartbeat is past the 90-day retention.
        let mut old = gateway::store::testing::heartbeat_row(LATE_LOCK, 0);
        old.hb.battery = Battery::Level(BatteryLevel::Low);
        old.hb.heartbeat_interval = HeartbeatInterval::from_hours(1).unwrap();
        old.received_at_ms = now_ms() - 100 * 86_400_000;
        old.hb.device_time = old.received_at_ms / 1000;
        store
            .commit(&Batch {
                heartbeats: vec![old],
                ..Batch::default()
            })
            .await
            .unwrap();
        store.close().await;

        let inbox = SmsInbox::start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = inbox.url();
        let gateway = GatewayProcess::start_with(
            &db.url,
            dir.path(),
            &[
                "--notifier",
                "webhook",
                "--sms-webhook-url",
                &url,
                "--registry-refresh-secs",
                "1",
            ],
        )
        .await;
        crate::common::wait_ready(gateway.http).await;
        let dash = Dashboard::subscribe(gateway.mqtt, &["events/v1/#", "rsp/v1/#"]).await;
        let mut world = World {
            sim: None,
            gateway,
            dash,
            inbox,
            db,
            _dir: dir,
            fleet,
            parsed,
            people: Vec::new(),
            job_lock,
            org,
            keys: 0,
        };
        world.people = world.grant_2fa(&twofa).await;
        world
    }

    /// A dashboard command that must succeed; its result.
    async fn ok(&mut self, department: Option<&str>, command: Value) -> Value {
        let a = self.answer(department, command).await;
        assert_eq!(a["status"], "ok", "{a}");
        a["result"].clone()
    }

    /// A dashboard command's answer.
    async fn answer(&mut self, department: Option<&str>, command: Value) -> Value {
        self.keys += 1;
        let key = format!("grafana-{}", self.keys);
        self.dash
            .command(&self.org, request(&key, department, command))
            .await
    }

    /// Two people with verified numbers and passcodes, each granted one of
    /// the `locks` (fleet indexes) for the next hour.
    async fn grant_2fa(&mut self, locks: &[usize]) -> Vec<TwoFactorPerson> {
        let mut people = Vec::new();
        for (n, (&i, user)) in locks.iter().zip(["ana", "ben"]).enumerate() {
            let lock = self.fleet.locks[i].clone();
            let mobile = format!("+659124000{n}");
            self.ok(
                None,
                json!({"type": "set_user_mobile", "user_id": user, "mobile": mobile}),
            )
            .await;
            self.ok(
                None,
                json!({"type": "verify_user_mobile", "user_id": user, "mobile": mobile}),
            )
            .await;
            let p = self
                .ok(
                    None,
                    json!({"type": "generate_2fa_passcode", "user_id": user}),
                )
                .await;
            let passcode = Zeroizing::new(p["passcode"].as_str().unwrap().to_string());
            self.ok(
                lock.departments.first().map(String::as_str),
                json!({"type": "grant_2fa", "user_id": user, "lock_id": lock.id,
                       "start": local(&lock.time_zone, -60), "end": local(&lock.time_zone, 3600)}),
            )
            .await;
            people.push(TwoFactorPerson {
                user_id: user.into(),
                mobile,
                passcode,
                locks: vec![lock.id.clone()],
            });
        }
        people
    }

    /// The simulated fleet starts reporting on its schedule.
    pub async fn start_devices(&mut self) {
        let sim = run::start(
            SimConfig {
                gateway: "127.0.0.1".into(),
                coap_port: self.gateway.coap.port(),
                mqtt_port: self.gateway.mqtt.port(),
                reporting: Reporting::Scheduled,
                speedup: 120.0,
                power_on_together: true,
                faults: NetFaults {
                    loss: 0.02,
                    dup: 0.05,
                },
                ack_timeout: Duration::from_millis(300),
                twofa: Some(TwoFactorSim {
                    people: self.people.clone(),
                    mean_interval: None,
                    p_wrong_passcode: 0.0,
                    p_wrong_otp: 0.0,
                    otp_timeout: Duration::from_secs(10),
                    inbox: InboxSource::Given(self.inbox.clone()),
                }),
                ..SimConfig::default()
            },
            self.fleet.clone(),
        )
        .await
        .unwrap();
        self.sim = Some(sim);
    }

    fn sim(&self) -> &RunHandle {
        self.sim
            .as_ref()
            .expect("the devices run (World::start_devices)")
    }

    /// An operator's day, compressed.
    pub async fn drive(&mut self) {
        self.bad_input().await;
        let late_job = self.jobs().await;
        self.bridges().await;
        self.twofa().await;
        // The lock-out, the late lock's pending job, its overdue state and
        // low battery stay in place across a gauge refresh.
        tokio::time::sleep(GAUGE_REFRESH_WAIT).await;
        self.clear_lockout().await;
        self.late_lock_returns(late_job).await;
    }

    /// Garbage, an unprotected request, a wrong MQTT password: refused and
    /// counted.
    async fn bad_input(&mut self) {
        let mut coap = CoapClient::new(self.gateway.coap).await;
        coap.send_raw(b"\xffnot coap at all").await;
        let plain = coap.request(RequestType::Post, "hb", vec![0xa0], true);
        let answer = coap.exchange(&plain).await;
        assert!(
            answer.header.code.to_string().starts_with('4'),
            "an unprotected heartbeat is refused: {}",
            answer.header.code
        );
        let mut opts = rumqttc::MqttOptions::new(
            "L000001",
            self.gateway.mqtt.ip().to_string(),
            self.gateway.mqtt.port(),
        );
        opts.set_credentials("L000001", "not-its-password");
        let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 4);
        let refused = tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await;
        assert!(
            !matches!(
                refused,
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))))
            ),
            "a wrong password is not let in: {refused:?}"
        );
    }

    /// Jobs at a heartbeat: one completes, one fails on a hard reset and
    /// is recreated, a command is refused; a job for the late lock waits.
    /// Returns the late lock's job.
    async fn jobs(&mut self) -> u64 {
        let rec = self
            .parsed
            .locks
            .iter()
            .find(|l| l.record.id.as_str() == self.job_lock)
            .unwrap()
            .clone();
        let (id, dept) = (
            rec.record.id.to_string(),
            rec.record.departments.first().cloned(),
        );
        let dept = dept.as_deref();
        let lock = self.sim().lock(&id).expect("the simulated lock");
        let pin = |pin: &str| {
            json!({"type": "create_custom_pin", "lock_id": id, "pin_name": "Cleaner",
                   "pin": pin, "pin_type": "permanent", "start_s": now_s() - 30})
        };
        let first = self.ok(dept, pin("2468013")).await["job"]["job_id"]
            .as_u64()
            .unwrap();
        // (Its power-on heartbeat may still be under way and take the job.)
        tokio::time::timeout(TALK, lock.heartbeat_now())
            .await
            .expect("the lock's conversation ends")
            .unwrap();
        self.wait_job(dept, first, "completed").await;

        let second = self.ok(dept, pin("9753124")).await["job"]["job_id"]
            .as_u64()
            .unwrap();
        lock.hard_reset_as_of(now_s() + 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        tokio::time::timeout(TALK, lock.heartbeat_now())
            .await
            .expect("the lock's conversation ends")
            .unwrap();
        let failed = self
            .ok(dept, json!({"type": "get_job", "job_id": second}))
            .await;
        assert_eq!(failed["job"]["state"], "failed", "{failed}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        self.ok(dept, json!({"type": "recreate_job", "job_id": second}))
            .await;
        let refused = self
            .answer(dept, json!({"type": "unlock", "lock_id": id}))
            .await;
        assert_eq!(refused["status"], "refused", "{refused}");

        let late = self
            .parsed
            .locks
            .iter()
            .find(|l| l.record.id.as_str() == LATE_LOCK)
            .unwrap()
            .clone();
        let job = self
            .ok(
                late.record.departments.first().map(String::as_str),
                json!({"type": "create_custom_pin", "lock_id": LATE_LOCK, "pin_name": "Courier",
                       "pin": "1357913", "pin_type": "permanent", "start_s": now_s() - 30}),
            )
            .await;
        job["job"]["job_id"].as_u64().unwrap()
    }

    /// An unlock through a bridge; the bridge goes offline and back.
    async fn bridges(&mut self) {
        let rec = self
            .parsed
            .locks
            .iter()
            .find(|l| l.record.bridge.is_some() && l.record.departments.len() <= 1)
            .expect("a bridged lock in at most one department")
            .clone();
        let (id, dept) = (
            rec.record.id.to_string(),
            rec.record.departments.first().cloned(),
        );
        let dept = dept.as_deref();
        let bridge = self
            .sim()
            .bridge(rec.record.bridge.as_ref().unwrap().as_str())
            .expect("the simulated bridge");
        let job = self
            .ok(dept, json!({"type": "unlock", "lock_id": id}))
            .await["job"]["job_id"]
            .as_u64()
            .unwrap();
        self.wait_job(dept, job, "completed").await;
        bridge.go_offline().await.unwrap();
        self.dash
            .wait_for(15, "the bridge offline", |m| {
                m.iter().any(|(t, p)| {
                    t.ends_with("/connectivity") && String::from_utf8_lossy(p).contains("false")
                })
            })
            .await;
        bridge.go_online().await.unwrap();
    }

    async fn wait_job(&mut self, dept: Option<&str>, job: u64, state: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = self
                .ok(dept, json!({"type": "get_job", "job_id": job}))
                .await;
            if got["job"]["state"] == state {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job} never {state}: {got}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Doors opened, a wrong OTP, the SMS provider failing, and five wrong
    /// passcodes locking ana's lock out.
    async fn twofa(&mut self) {
        let ana = self.sim().person("ana").unwrap();
        let ben = self.sim().person("ben").unwrap();
        let ana_lock = self.sim().lock(&self.people[0].locks[0]).unwrap();
        let ben_lock = self.sim().lock(&self.people[1].locks[0]).unwrap();
        let v = ana.visit(&ana_lock).await;
        assert_eq!(v.end, VisitEnd::Opened, "{v:?}");
        let v = ana
            .visit_with(
                &ana_lock,
                VisitPlan {
                    wrong_passcode: false,
                    wrong_otp_first: true,
                },
            )
            .await;
        assert_eq!(v.end, VisitEnd::Opened, "{v:?}");
        self.inbox.set_mode(InboxMode::Status(503));
        let v = ben.visit(&ben_lock).await;
        assert_eq!(
            v.end,
            VisitEnd::Refused(TwoFactorResult::NotifierFailed),
            "{v:?}"
        );
        self.inbox.set_mode(InboxMode::Up);
        let v = ben.visit(&ben_lock).await;
        assert_eq!(v.end, VisitEnd::Opened, "{v:?}");
        let wrong = VisitPlan {
            wrong_passcode: true,
            wrong_otp_first: false,
        };
        for _ in 0..5 {
            ana.visit_with(&ana_lock, wrong).await;
        }
        let v = ana.visit(&ana_lock).await;
        assert_eq!(
            v.end,
            VisitEnd::Refused(TwoFactorResult::LockedOut),
            "{v:?}"
        );
    }

    async fn clear_lockout(&mut self) {
        let lock = self.people[0].locks[0].clone();
        let dept = self
            .parsed
            .locks
            .iter()
            .find(|l| l.record.id.as_str() == lock)
            .and_then(|l| l.record.departments.first().cloned());
        self.ok(
            dept.as_deref(),
            json!({"type": "clear_2fa_lockout", "lock_id": lock}),
        )
        .await;
    }

    /// The late lock reports: back from overdue; it gets its job, reports
    /// it done, and repeats the report (ignored, already final).
    async fn late_lock_returns(&mut self, job: u64) {
        let mut late = JobLock::new(self.gateway.coap, LATE_LOCK).await;
        let down = late.heartbeat().await;
        let delivered: Vec<_> = down.jobs.iter().filter(|j| j.id == job).collect();
        assert_eq!(delivered.len(), 1, "the late lock gets its job: {down:?}");
        let results: Vec<_> = delivered.into_iter().map(crate::common::done).collect();
        late.report(results.clone()).await;
        late.report(results).await;
    }

    /// Stop everything, the database last.
    pub async fn stop(self) {
        if let Some(sim) = self.sim {
            sim.stop();
            let _ = sim.finish().await;
        }
        self.dash.close().await;
        self.gateway.stop().await;
        self.db.cleanup().await;
    }
}
