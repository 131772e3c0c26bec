//! 2FA in the database: the dashboard's user, passcode, grant and lock-out
//! commands (inside the command transaction of `store::jobs`), the locks'
//! passcode and OTP entries (one transaction per writer batch), and the 2FA
//! activity log whose rows are the dashboard's 2FA events.
//!
//! The rules are `dispatcher::twofa`; this module reads the facts they
//! need inside the transaction (on PostgreSQL with the lock's and the
//! user's rows locked, so instances agree on every counter) and writes
//! what they decide. No secret is stored or returned here: passcodes
//! arrive as their Argon2id key, OTPs as their keyed tag.

use super::jobs::{i, t, Bind, Prepared, Tx};
use super::{Store, StoreError};
use dispatcher::jobs::{check_department, Refusal};
use dispatcher::twofa::{
    self as rules, ChallengeFacts, ChallengeState, Counter, CounterKind, GrantFacts, Limits,
    OtpDecision, PasscodeDecision, PasscodeFacts, TwoFactorRefusal, UserFacts,
};
use dispatcher::LockRecord;
use schemas::command::{
    Command, CommandRequest, CommandResult, LockoutView, TwoFactorGrantView, TwoFactorUserView,
};
use schemas::twofa::{
    mask_mobile, valid_mobile, TwoFactorEvent, TwoFactorOutcome, TwoFactorResult,
};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Most grants one listing returns.
pub const MAX_LIST: u32 = 100;
const DEFAULT_LIST: u32 = 50;

/// What the gateway prepared for a passcode command before the
/// transaction: the new passcode (shown once) and its Argon2id key.
#[derive(Clone)]
pub struct NewPasscode {
    pub digits: Zeroizing<String>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for NewPasscode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPasscode(<redacted>)")
    }
}

/// A lock's 2FA entry, with what the edge computed from the typed digits.
#[derive(Clone, Debug)]
pub struct Entry {
    pub lock: Arc<LockRecord>,
    pub body: EntryBody,
}

#[derive(Clone)]
pub enum EntryBody {
    /// A passcode: its Argon2id key, and the challenge to create if it is
    /// accepted (id and OTP tag drawn at the edge, which keeps the OTP).
    Passcode {
        passcode_key: Vec<u8>,
        challenge_id: u64,
        otp_tag: [u8; 32],
    },
    /// An OTP for `challenge_id`, as its tag.
    Otp {
        challenge_id: u64,
        otp_tag: [u8; 32],
    },
}

impl std::fmt::Debug for EntryBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryBody::Passcode { challenge_id, .. } => {
                write!(f, "Passcode {{ challenge_id: {challenge_id}, .. }}")
            }
            EntryBody::Otp { challenge_id, .. } => {
                write!(f, "Otp {{ challenge_id: {challenge_id}, .. }}")
            }
        }
    }
}

/// Where a new challenge's OTP goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyTarget {
    pub user_id: String,
    /// Personal data: never logged.
    pub mobile: String,
}

/// What an entry decided, for the lock's answer and the dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryOutcome {
    pub result: TwoFactorResult,
    /// Stable detail (the event's reason), for metrics.
    pub reason: &'static str,
    pub challenge: Option<u64>,
    pub expires_at_ms: Option<u64>,
    pub retry_at_ms: Option<u64>,
    pub tries_left: Option<u8>,
    /// Set when a challenge was created: send its OTP here.
    pub notify: Option<NotifyTarget>,
    /// The committed 2FA events, in order.
    pub events: Vec<TwoFactorEvent>,
}

impl EntryOutcome {
    fn new(result: TwoFactorResult, reason: &'static str) -> Self {
        EntryOutcome {
            result,
            reason,
            challenge: None,
            expires_at_ms: None,
            retry_at_ms: None,
            tries_left: None,
            notify: None,
            events: Vec::new(),
        }
    }
}

/// A 2FA activity-log record before it has its sequence number.
#[derive(Clone, Debug, Default)]
struct Log {
    org: String,
    reason: Option<String>,
    lock_id: Option<String>,
    user_id: Option<String>,
    department: Option<String>,
    grant_id: Option<u64>,
    challenge_id: Option<u64>,
    tries_left: Option<u8>,
    lockout_until_ms: Option<u64>,
}

/// Append to the 2FA activity log; the row's sequence number is the event id.
async fn log(
    tx: &mut Tx,
    outcome: TwoFactorOutcome,
    l: Log,
    at_ms: u64,
) -> Result<TwoFactorEvent, sqlx::Error> {
    let opt = |v: Option<u64>| Bind::OptI64(v.map(|v| v.min(i64::MAX as u64) as i64));
    let seq = tx
        .scalar::<i64>(
            "INSERT INTO tfa_log (org, outcome, reason, lock_id, user_id, department, grant_id, \
             challenge_id, tries_left, lockout_until_ms, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING seq",
            &[
                t(&l.org),
                t(outcome.as_str()),
                Bind::OptText(l.reason.clone()),
                Bind::OptText(l.lock_id.clone()),
                Bind::OptText(l.user_id.clone()),
                Bind::OptText(l.department.clone()),
                opt(l.grant_id),
                opt(l.challenge_id),
                opt(l.tries_left.map(u64::from)),
                opt(l.lockout_until_ms),
                i(at_ms),
            ],
        )
        .await?
        .unwrap_or_default();
    Ok(TwoFactorEvent {
        event_id: format!("2fa:{seq}"),
        org: l.org,
        outcome,
        reason: l.reason,
        lock_id: l.lock_id,
        user_id: l.user_id,
        department: l.department,
        grant_id: l.grant_id,
        challenge_id: l.challenge_id,
        tries_left: l.tries_left,
        lockout_until_ms: l.lockout_until_ms,
        at_ms,
    })
}

#[derive(sqlx::FromRow)]
struct CounterRow {
    window_start_ms: i64,
    count: i64,
    locked_since_ms: i64,
    locked_until_ms: i64,
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

async fn counter(
    tx: &mut Tx,
    org: &str,
    kind: CounterKind,
    subject: &str,
) -> Result<Counter, sqlx::Error> {
    let (scope, name) = kind.as_pair();
    let rows = tx
        .rows::<CounterRow>(
            "SELECT window_start_ms, count, locked_since_ms, locked_until_ms FROM tfa_limits \
             WHERE org = $1 AND scope = $2 AND subject = $3 AND counter = $4",
            &[t(org), t(scope), t(subject), t(name)],
        )
        .await?;
    Ok(rows.first().map_or(Counter::default(), |r| Counter {
        window_start_ms: u(r.window_start_ms),
        count: r.count.clamp(0, i64::from(u32::MAX)) as u32,
        locked_since_ms: u(r.locked_since_ms),
        locked_until_ms: u(r.locked_until_ms),
    }))
}

async fn put_counter(
    tx: &mut Tx,
    org: &str,
    kind: CounterKind,
    subject: &str,
    c: Counter,
) -> Result<(), sqlx::Error> {
    let (scope, name) = kind.as_pair();
    tx.execute(
        "INSERT INTO tfa_limits (org, scope, subject, counter, window_start_ms, count, locked_since_ms, locked_until_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (org, scope, subject, counter) DO UPDATE SET window_start_ms = excluded.window_start_ms, \
         count = excluded.count, locked_since_ms = excluded.locked_since_ms, locked_until_ms = excluded.locked_until_ms",
        &[
            t(org),
            t(scope),
            t(subject),
            t(name),
            i(c.window_start_ms),
            i(u64::from(c.count)),
            i(c.locked_since_ms),
            i(c.locked_until_ms),
        ],
    )
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow, Clone)]
struct UserRow {
    user_id: String,
    mobile: Option<String>,
    mobile_verified: bool,
    active: bool,
    has_passcode: bool,
    passcode_set_at_ms: Option<i64>,
    updated_at_ms: i64,
}

const USER_COLUMNS: &str = "user_id, mobile, mobile_verified, active, \
     passcode_key IS NOT NULL AS has_passcode, passcode_set_at_ms, updated_at_ms";

impl UserRow {
    fn facts(&self) -> UserFacts {
        UserFacts {
            user_id: self.user_id.clone(),
            active: self.active,
            mobile: self.mobile.clone(),
            mobile_verified: self.mobile_verified,
        }
    }
}

async fn user(tx: &mut Tx, org: &str, user_id: &str) -> Result<Option<UserRow>, sqlx::Error> {
    if tx.is_postgres() {
        tx.execute(
            "SELECT user_id FROM tfa_users WHERE org = $1 AND user_id = $2 FOR UPDATE",
            &[t(org), t(user_id)],
        )
        .await?;
    }
    Ok(tx
        .rows::<UserRow>(
            &format!("SELECT {USER_COLUMNS} FROM tfa_users WHERE org = $1 AND user_id = $2"),
            &[t(org), t(user_id)],
        )
        .await?
        .into_iter()
        .next())
}

/// The user's row, without taking its lock again.
async fn user_read(tx: &mut Tx, org: &str, user_id: &str) -> Result<Option<UserRow>, sqlx::Error> {
    Ok(tx
        .rows::<UserRow>(
            &format!("SELECT {USER_COLUMNS} FROM tfa_users WHERE org = $1 AND user_id = $2"),
            &[t(org), t(user_id)],
        )
        .await?
        .into_iter()
        .next())
}

async fn user_view(
    tx: &mut Tx,
    org: &str,
    row: &UserRow,
    now_ms: u64,
) -> Result<TwoFactorUserView, sqlx::Error> {
    let failures = counter(tx, org, CounterKind::UserFailures, &row.user_id).await?;
    Ok(TwoFactorUserView {
        user_id: row.user_id.clone(),
        mobile_masked: row.mobile.as_deref().map(mask_mobile),
        mobile_verified: row.mobile_verified,
        active: row.active,
        has_passcode: row.has_passcode,
        passcode_set_at_ms: row.passcode_set_at_ms.map(u),
        locked_out_until_ms: failures.locked(now_ms),
        updated_at_ms: u(row.updated_at_ms),
    })
}

#[derive(sqlx::FromRow, Clone)]
struct GrantRow {
    grant_id: i64,
    org: String,
    department: Option<String>,
    lock_id: String,
    user_id: String,
    start_local: String,
    end_local: String,
    time_zone: String,
    start_ms: i64,
    end_ms: i64,
    created_by: String,
    created_at_ms: i64,
    revoked_at_ms: Option<i64>,
    updated_at_ms: i64,
}

const GRANT_COLUMNS: &str = "grant_id, org, department, lock_id, user_id, start_local, end_local, \
     time_zone, start_ms, end_ms, created_by, created_at_ms, revoked_at_ms, updated_at_ms";

impl GrantRow {
    fn view(&self, now_ms: u64) -> TwoFactorGrantView {
        TwoFactorGrantView {
            grant_id: u(self.grant_id),
            org: self.org.clone(),
            department: self.department.clone(),
            lock_id: self.lock_id.clone(),
            user_id: self.user_id.clone(),
            start: self.start_local.clone(),
            end: self.end_local.clone(),
            time_zone: self.time_zone.clone(),
            start_ms: u(self.start_ms),
            end_ms: u(self.end_ms),
            status: rules::grant_status(
                u(self.start_ms),
                u(self.end_ms),
                self.revoked_at_ms.is_some(),
                now_ms,
            )
            .to_string(),
            created_by: self.created_by.clone(),
            created_at_ms: u(self.created_at_ms),
            revoked_at_ms: self.revoked_at_ms.map(u),
            updated_at_ms: u(self.updated_at_ms),
        }
    }

    fn facts(&self) -> GrantFacts {
        GrantFacts {
            grant_id: u(self.grant_id),
            department: self.department.clone(),
            start_ms: u(self.start_ms),
            end_ms: u(self.end_ms),
        }
    }
}

/// A grant of the organisation, visible in the requester's department
/// (access in department A is not seen in department B).
async fn grant(
    tx: &mut Tx,
    org: &str,
    department: Option<&str>,
    grant_id: u64,
) -> Result<Option<GrantRow>, sqlx::Error> {
    Ok(tx
        .rows::<GrantRow>(
            &format!(
                "SELECT {GRANT_COLUMNS} FROM tfa_grants WHERE grant_id = $1 AND org = $2 \
                 AND COALESCE(department, '') = $3"
            ),
            &[i(grant_id), t(org), t(department.unwrap_or(""))],
        )
        .await?
        .into_iter()
        .next())
}

/// End the open challenges matching `filter` (with its binds from `$2`).
async fn end_open_challenges(
    tx: &mut Tx,
    state: ChallengeState,
    filter: &str,
    binds: &[Bind],
    now_ms: u64,
) -> Result<u64, sqlx::Error> {
    let mut all = vec![t(state.as_str()), i(now_ms)];
    all.extend_from_slice(binds);
    tx.execute(
        &format!(
            "UPDATE tfa_challenges SET state = $1, ended_at_ms = $2 WHERE state = 'open' AND {filter}"
        ),
        &all,
    )
    .await
}

type Ruled<T> = Result<Result<T, Refusal>, sqlx::Error>;

fn refused<T>(r: TwoFactorRefusal) -> Ruled<T> {
    Ok(Err(Refusal::TwoFactor(r)))
}

/// Run one 2FA command inside the command transaction. `events` gets the
/// committed 2FA events (a cleared lock-out).
pub(super) async fn execute(
    tx: &mut Tx,
    org: &str,
    req: &CommandRequest,
    prepared: &Prepared,
    now_ms: u64,
    events: &mut Vec<TwoFactorEvent>,
) -> Ruled<CommandResult> {
    let dept = req.department.as_deref();
    let user_result = |view| Ok(Ok(CommandResult::TwoFactorUser { user: view }));
    match &req.command {
        Command::SetUserMobile { user_id, mobile } => {
            if let Err(r) = rules::check_user_id(user_id) {
                return refused(r);
            }
            if !valid_mobile(mobile) {
                return refused(TwoFactorRefusal::BadMobile);
            }
            match user(tx, org, user_id).await? {
                Some(row) if row.mobile.as_deref() == Some(mobile) => {}
                Some(_) => {
                    tx.execute(
                        "UPDATE tfa_users SET mobile = $1, mobile_verified = $2, updated_at_ms = $3 \
                         WHERE org = $4 AND user_id = $5",
                        &[t(mobile), Bind::Bool(false), i(now_ms), t(org), t(user_id)],
                    )
                    .await?;
                    // An OTP on its way to the old number must not open anything.
                    end_open_challenges(
                        tx,
                        ChallengeState::Revoked,
                        "org = $3 AND user_id = $4",
                        &[t(org), t(user_id)],
                        now_ms,
                    )
                    .await?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO tfa_users (org, user_id, mobile, mobile_verified, active, updated_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[t(org), t(user_id), t(mobile), Bind::Bool(false), Bind::Bool(true), i(now_ms)],
                    )
                    .await?;
                }
            }
            let row = user(tx, org, user_id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            user_result(user_view(tx, org, &row, now_ms).await?)
        }
        Command::VerifyUserMobile { user_id, mobile } => {
            let Some(row) = user(tx, org, user_id).await? else {
                return refused(TwoFactorRefusal::UnknownUser(user_id.clone()));
            };
            if row.mobile.as_deref() != Some(mobile.as_str()) {
                return refused(TwoFactorRefusal::MobileMismatch(user_id.clone()));
            }
            tx.execute(
                "UPDATE tfa_users SET mobile_verified = $1, updated_at_ms = $2 WHERE org = $3 AND user_id = $4",
                &[Bind::Bool(true), i(now_ms), t(org), t(user_id)],
            )
            .await?;
            let row = user(tx, org, user_id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            user_result(user_view(tx, org, &row, now_ms).await?)
        }
        Command::DeactivateUser { user_id } | Command::ReactivateUser { user_id } => {
            let active = matches!(req.command, Command::ReactivateUser { .. });
            if user(tx, org, user_id).await?.is_none() {
                return refused(TwoFactorRefusal::UnknownUser(user_id.clone()));
            }
            tx.execute(
                "UPDATE tfa_users SET active = $1, updated_at_ms = $2 WHERE org = $3 AND user_id = $4",
                &[Bind::Bool(active), i(now_ms), t(org), t(user_id)],
            )
            .await?;
            if !active {
                // Deactivation revokes every 2FA access at once.
                tx.execute(
                    "UPDATE tfa_grants SET revoked_at_ms = $1, updated_at_ms = $1 \
                     WHERE org = $2 AND user_id = $3 AND revoked_at_ms IS NULL",
                    &[i(now_ms), t(org), t(user_id)],
                )
                .await?;
                end_open_challenges(
                    tx,
                    ChallengeState::Revoked,
                    "org = $3 AND user_id = $4",
                    &[t(org), t(user_id)],
                    now_ms,
                )
                .await?;
            }
            let row = user(tx, org, user_id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            user_result(user_view(tx, org, &row, now_ms).await?)
        }
        Command::GenerateTwoFactorPasscode { user_id }
        | Command::ResetTwoFactorPasscode { user_id } => {
            let generate = matches!(req.command, Command::GenerateTwoFactorPasscode { .. });
            let Some(row) = user(tx, org, user_id).await? else {
                return refused(TwoFactorRefusal::UnknownUser(user_id.clone()));
            };
            if !row.active {
                return refused(TwoFactorRefusal::UserDeactivated(user_id.clone()));
            }
            if !row.mobile_verified {
                return refused(TwoFactorRefusal::MobileUnverified(user_id.clone()));
            }
            if generate && row.has_passcode {
                return refused(TwoFactorRefusal::PasscodeExists(user_id.clone()));
            }
            // A passcode names one user in the organisation: the first
            // candidate nobody has is used (a clash among 10^8 is rare; three
            // in a row would mean the organisation is nearly full).
            let mut chosen = None;
            for candidate in &prepared.passcodes {
                let taken = tx
                    .scalar::<String>(
                        "SELECT user_id FROM tfa_users WHERE org = $1 AND passcode_key = $2",
                        &[t(org), Bind::OptBytes(Some(candidate.key.clone()))],
                    )
                    .await?;
                if taken.is_none() {
                    chosen = Some(candidate);
                    break;
                }
            }
            let Some(new) = chosen else {
                return Ok(Err(Refusal::BadRequest(
                    "no free passcode could be drawn for this organisation: retry with a new idempotency key".into(),
                )));
            };
            tx.execute(
                "UPDATE tfa_users SET passcode_key = $1, passcode_set_at_ms = $2, updated_at_ms = $2 \
                 WHERE org = $3 AND user_id = $4",
                &[Bind::OptBytes(Some(new.key.clone())), i(now_ms), t(org), t(user_id)],
            )
            .await?;
            // A challenge started with the old passcode ends with it.
            end_open_challenges(
                tx,
                ChallengeState::Revoked,
                "org = $3 AND user_id = $4",
                &[t(org), t(user_id)],
                now_ms,
            )
            .await?;
            Ok(Ok(CommandResult::TwoFactorPasscode {
                user_id: user_id.clone(),
                passcode: Some(new.digits.to_string()),
                shown_before: false,
                set_at_ms: now_ms,
            }))
        }
        Command::GrantTwoFactor {
            lock_id,
            user_id,
            start,
            end,
        } => {
            let lock = match super::jobs::lock_of(prepared, lock_id, org) {
                Ok(l) => l,
                Err(r) => return Ok(Err(r)),
            };
            if let Err(r) = check_department(lock, dept) {
                return Ok(Err(r));
            }
            if let Err(r) = rules::check_lock(lock) {
                return refused(r);
            }
            let Some(row) = user(tx, org, user_id).await? else {
                return refused(TwoFactorRefusal::UnknownUser(user_id.clone()));
            };
            if !row.active {
                return refused(TwoFactorRefusal::UserDeactivated(user_id.clone()));
            }
            if !row.mobile_verified {
                return refused(TwoFactorRefusal::MobileUnverified(user_id.clone()));
            }
            let (start_ms, end_ms) = match rules::check_window(lock, start, end, now_ms) {
                Ok(w) => w,
                Err(r) => return refused(r),
            };
            let existing = tx
                .scalar::<i64>(
                    "SELECT grant_id FROM tfa_grants WHERE org = $1 AND user_id = $2 AND lock_id = $3 \
                     AND revoked_at_ms IS NULL AND end_ms > $4 AND COALESCE(department, '') = $5 \
                     ORDER BY grant_id LIMIT 1",
                    &[t(org), t(user_id), t(lock_id), i(now_ms), t(dept.unwrap_or(""))],
                )
                .await?;
            if let Some(g) = existing {
                return refused(TwoFactorRefusal::GrantExists {
                    user: user_id.clone(),
                    lock: lock_id.clone(),
                    grant_id: u(g),
                });
            }
            let id = tx
                .scalar::<i64>(
                    "INSERT INTO tfa_grants (org, department, lock_id, user_id, start_local, end_local, time_zone, \
                     start_ms, end_ms, created_by, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING grant_id",
                    &[
                        t(org),
                        Bind::OptText(dept.map(str::to_string)),
                        t(lock_id),
                        t(user_id),
                        t(start),
                        t(end),
                        t(&*lock.time_zone),
                        i(start_ms),
                        i(end_ms),
                        t(&req.requested_by),
                        i(now_ms),
                    ],
                )
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            let g = grant(tx, org, dept, u(id))
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            Ok(Ok(CommandResult::TwoFactorGrant {
                grant: g.view(now_ms),
            }))
        }
        Command::EditTwoFactorGrant { grant_id, end } => {
            let Some(g) = grant(tx, org, dept, *grant_id).await? else {
                return refused(TwoFactorRefusal::UnknownGrant(*grant_id));
            };
            if g.revoked_at_ms.is_some() || u(g.end_ms) <= now_ms {
                return refused(TwoFactorRefusal::GrantEnded(*grant_id));
            }
            let end_ms = match rules::local_to_ms_in(&g.lock_id, &g.time_zone, "end", end) {
                Ok(v) => v,
                Err(r) => return refused(r),
            };
            if end_ms <= u(g.start_ms) {
                return refused(TwoFactorRefusal::BadWindow {
                    start: g.start_local.clone(),
                    end: end.clone(),
                });
            }
            if end_ms <= now_ms {
                return refused(TwoFactorRefusal::EndInPast {
                    end: end.clone(),
                    zone: g.time_zone.clone(),
                });
            }
            tx.execute(
                "UPDATE tfa_grants SET end_local = $1, end_ms = $2, updated_at_ms = $3 WHERE grant_id = $4",
                &[t(end), i(end_ms), i(now_ms), i(*grant_id)],
            )
            .await?;
            let g = grant(tx, org, dept, *grant_id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            Ok(Ok(CommandResult::TwoFactorGrant {
                grant: g.view(now_ms),
            }))
        }
        Command::RevokeTwoFactorGrant { grant_id } => {
            let Some(g) = grant(tx, org, dept, *grant_id).await? else {
                return refused(TwoFactorRefusal::UnknownGrant(*grant_id));
            };
            if g.revoked_at_ms.is_none() {
                tx.execute(
                    "UPDATE tfa_grants SET revoked_at_ms = $1, updated_at_ms = $1 WHERE grant_id = $2",
                    &[i(now_ms), i(*grant_id)],
                )
                .await?;
                end_open_challenges(
                    tx,
                    ChallengeState::Revoked,
                    "grant_id = $3",
                    &[i(*grant_id)],
                    now_ms,
                )
                .await?;
            }
            let g = grant(tx, org, dept, *grant_id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            Ok(Ok(CommandResult::TwoFactorGrant {
                grant: g.view(now_ms),
            }))
        }
        Command::GetTwoFactorUser { user_id } => {
            let Some(row) = user(tx, org, user_id).await? else {
                return refused(TwoFactorRefusal::UnknownUser(user_id.clone()));
            };
            user_result(user_view(tx, org, &row, now_ms).await?)
        }
        Command::ListTwoFactorGrants {
            lock_id,
            user_id,
            limit,
            before_grant_id,
        } => {
            let limit = limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST);
            let mut rows = tx
                .rows::<GrantRow>(
                    &format!(
                        "SELECT {GRANT_COLUMNS} FROM tfa_grants WHERE org = $1 AND COALESCE(department, '') = $2 \
                         AND ($3 = '' OR lock_id = $3) AND ($4 = '' OR user_id = $4) AND grant_id < $5 \
                         ORDER BY grant_id DESC LIMIT $6"
                    ),
                    &[
                        t(org),
                        t(dept.unwrap_or("")),
                        t(lock_id.as_deref().unwrap_or("")),
                        t(user_id.as_deref().unwrap_or("")),
                        i(before_grant_id.unwrap_or(i64::MAX as u64)),
                        i(u64::from(limit) + 1),
                    ],
                )
                .await?;
            let next_before = if rows.len() > limit as usize {
                rows.truncate(limit as usize);
                rows.last().map(|g| u(g.grant_id))
            } else {
                None
            };
            Ok(Ok(CommandResult::TwoFactorGrants {
                grants: rows.iter().map(|g| g.view(now_ms)).collect(),
                next_before,
            }))
        }
        Command::ListTwoFactorLockouts {} => Ok(Ok(CommandResult::TwoFactorLockouts {
            lockouts: lockouts(tx, org, now_ms).await?,
        })),
        Command::ClearTwoFactorLockout { lock_id, user_id } => {
            let (kind, subject) = match (lock_id, user_id) {
                (Some(l), None) => {
                    // A lock's lock-out is its department's business.
                    let lock = match super::jobs::lock_of(prepared, l, org) {
                        Ok(lock) => lock,
                        Err(r) => return Ok(Err(r)),
                    };
                    if let Err(r) = check_department(lock, dept) {
                        return Ok(Err(r));
                    }
                    tx.lock_row(l).await?;
                    (CounterKind::LockFailures, l)
                }
                (None, Some(u)) => {
                    // Serialised with the user's OTP entries, which count failures.
                    user(tx, org, u).await?;
                    (CounterKind::UserFailures, u)
                }
                _ => return refused(TwoFactorRefusal::LockoutTarget),
            };
            let c = counter(tx, org, kind, subject).await?;
            if c.locked(now_ms).is_some() || c.count > 0 {
                put_counter(tx, org, kind, subject, c.cleared()).await?;
            }
            if c.locked(now_ms).is_some() {
                let (lock_id, user_id) = match kind {
                    CounterKind::LockFailures => (Some(subject.clone()), None),
                    _ => (None, Some(subject.clone())),
                };
                events.push(
                    log(
                        tx,
                        TwoFactorOutcome::LockoutCleared,
                        Log {
                            org: org.to_string(),
                            reason: Some(if kind == CounterKind::LockFailures {
                                "wrong_passcodes".into()
                            } else {
                                "failed_challenges".into()
                            }),
                            lock_id,
                            user_id,
                            ..Log::default()
                        },
                        now_ms,
                    )
                    .await?,
                );
            }
            Ok(Ok(CommandResult::TwoFactorLockouts {
                lockouts: lockouts(tx, org, now_ms).await?,
            }))
        }
        _ => Ok(Err(Refusal::BadRequest(format!(
            "internal: {} is not a 2FA command",
            req.command.kind()
        )))),
    }
}

#[derive(sqlx::FromRow)]
struct LockoutRow {
    scope: String,
    subject: String,
    counter: String,
    locked_since_ms: i64,
    locked_until_ms: i64,
}

async fn lockouts(tx: &mut Tx, org: &str, now_ms: u64) -> Result<Vec<LockoutView>, sqlx::Error> {
    let rows = tx
        .rows::<LockoutRow>(
            "SELECT scope, subject, counter, locked_since_ms, locked_until_ms FROM tfa_limits \
             WHERE org = $1 AND locked_until_ms > $2 ORDER BY locked_until_ms, scope, subject",
            &[t(org), i(now_ms)],
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.counter == "failures")
        .map(|r| LockoutView {
            reason: if r.scope == "lock" {
                "wrong_passcodes".into()
            } else {
                "failed_challenges".into()
            },
            scope: r.scope,
            id: r.subject,
            since_ms: u(r.locked_since_ms),
            until_ms: u(r.locked_until_ms),
        })
        .collect())
}

/// Lock-outs in force in every organisation (the metrics gauge).
pub(super) async fn count_lockouts(store: &Store, now_ms: u64) -> Result<(u64, u64), StoreError> {
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "counting 2FA lock-outs", e);
    let mut tx = Tx::begin_read(store).await.map_err(err)?;
    let lock = tx
        .scalar::<i64>(
            "SELECT COUNT(*) FROM tfa_limits WHERE scope = 'lock' AND counter = 'failures' AND locked_until_ms > $1",
            &[i(now_ms)],
        )
        .await
        .map_err(err)?
        .unwrap_or(0);
    let user = tx
        .scalar::<i64>(
            "SELECT COUNT(*) FROM tfa_limits WHERE scope = 'user' AND counter = 'failures' AND locked_until_ms > $1",
            &[i(now_ms)],
        )
        .await
        .map_err(err)?
        .unwrap_or(0);
    tx.commit().await.map_err(err)?;
    Ok((u(lock), u(user)))
}

#[derive(sqlx::FromRow)]
struct ChallengeRow {
    user_id: String,
    grant_id: i64,
    department: Option<String>,
    expires_at_ms: i64,
    tries: i64,
    state: String,
    otp_tag: Vec<u8>,
}

/// Decide and record a batch of lock entries in one transaction, in order.
pub(super) async fn apply_entries(
    store: &Store,
    entries: &[Entry],
    limits: &Limits,
    now_ms: u64,
) -> Result<Vec<EntryOutcome>, StoreError> {
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "deciding 2FA entries", e);
    let mut tx = Tx::begin(store).await.map_err(err)?;
    // PostgreSQL: the batch's locks in one order, so two instances' batches
    // cannot wait on each other.
    let mut locks: Vec<&str> = entries.iter().map(|e| e.lock.id.as_str()).collect();
    locks.sort_unstable();
    locks.dedup();
    for l in locks {
        tx.lock_row(l).await.map_err(err)?;
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let o = match &e.body {
            EntryBody::Passcode {
                passcode_key,
                challenge_id,
                otp_tag,
            } => {
                passcode(
                    &mut tx,
                    &e.lock,
                    passcode_key,
                    *challenge_id,
                    otp_tag,
                    limits,
                    now_ms,
                )
                .await
            }
            EntryBody::Otp {
                challenge_id,
                otp_tag,
            } => otp(&mut tx, &e.lock, *challenge_id, otp_tag, limits, now_ms).await,
        };
        out.push(o.map_err(err)?);
    }
    tx.commit().await.map_err(err)?;
    Ok(out)
}

async fn passcode(
    tx: &mut Tx,
    lock: &LockRecord,
    passcode_key: &[u8],
    challenge_id: u64,
    otp_tag: &[u8; 32],
    limits: &Limits,
    now_ms: u64,
) -> Result<EntryOutcome, sqlx::Error> {
    let org = lock.org.as_str();
    let lock_id = lock.id.as_str();
    // The same statements whether or not the passcode names a user, so the
    // time taken says as little as the answer does.
    let found = tx
        .scalar::<String>(
            "SELECT user_id FROM tfa_users WHERE org = $1 AND passcode_key = $2",
            &[t(org), Bind::OptBytes(Some(passcode_key.to_vec()))],
        )
        .await?;
    let mut user_id = found.clone().unwrap_or_default();
    let mut row = user(tx, org, &user_id).await?;
    // With the user's row locked (PostgreSQL), the passcode must still be
    // theirs: a reset that committed meanwhile has made it nobody's.
    let mut found = found;
    if found.is_some() {
        let still = tx
            .scalar::<String>(
                "SELECT user_id FROM tfa_users WHERE org = $1 AND user_id = $2 AND passcode_key = $3",
                &[t(org), t(&user_id), Bind::OptBytes(Some(passcode_key.to_vec()))],
            )
            .await?;
        if still.is_none() {
            found = None;
            user_id.clear();
            row = None;
        }
    }
    let grants = tx
        .rows::<GrantRow>(
            &format!(
                "SELECT {GRANT_COLUMNS} FROM tfa_grants WHERE org = $1 AND user_id = $2 AND lock_id = $3 \
                 AND revoked_at_ms IS NULL ORDER BY grant_id"
            ),
            &[t(org), t(&user_id), t(lock_id)],
        )
        .await?;
    let facts = PasscodeFacts {
        lock_supports_2fa: rules::supports_2fa(lock.model),
        lock_requests: counter(tx, org, CounterKind::LockRequests, lock_id).await?,
        lock_failures: counter(tx, org, CounterKind::LockFailures, lock_id).await?,
        user: row.as_ref().map(UserRow::facts),
        grants: grants.iter().map(GrantRow::facts).collect(),
        user_challenges: counter(tx, org, CounterKind::UserChallenges, &user_id).await?,
        user_failures: counter(tx, org, CounterKind::UserFailures, &user_id).await?,
    };
    let (decision, effects) = rules::decide_passcode(&facts, limits, now_ms);
    for (kind, c) in &effects.writes {
        let subject = match kind {
            CounterKind::LockRequests | CounterKind::LockFailures => lock_id,
            CounterKind::UserChallenges | CounterKind::UserFailures => user_id.as_str(),
        };
        put_counter(tx, org, *kind, subject, *c).await?;
    }
    let user_known = found.clone();
    let base = Log {
        org: org.to_string(),
        lock_id: Some(lock_id.to_string()),
        user_id: user_known,
        ..Log::default()
    };
    let mut outcome = match decision {
        PasscodeDecision::Issue {
            grant_id,
            department,
            mobile,
            expires_at_ms,
        } => {
            // One open challenge per user at a lock: a new passcode entry
            // replaces the one before.
            end_open_challenges(
                tx,
                ChallengeState::Superseded,
                "org = $3 AND user_id = $4 AND lock_id = $5",
                &[t(org), t(&user_id), t(lock_id)],
                now_ms,
            )
            .await?;
            tx.execute(
                "INSERT INTO tfa_challenges (challenge_id, org, lock_id, user_id, grant_id, department, otp_tag, \
                 created_at_ms, expires_at_ms, tries, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 'open')",
                &[
                    i(challenge_id),
                    t(org),
                    t(lock_id),
                    t(&user_id),
                    i(grant_id),
                    Bind::OptText(department.clone()),
                    Bind::OptBytes(Some(otp_tag.to_vec())),
                    i(now_ms),
                    i(expires_at_ms),
                ],
            )
            .await?;
            let ev = log(
                tx,
                TwoFactorOutcome::ChallengeSent,
                Log {
                    department,
                    grant_id: Some(grant_id),
                    challenge_id: Some(challenge_id),
                    ..base.clone()
                },
                now_ms,
            )
            .await?;
            let mut o = EntryOutcome::new(TwoFactorResult::OtpSent, "otp_sent");
            o.challenge = Some(challenge_id);
            o.expires_at_ms = Some(expires_at_ms);
            o.notify = Some(NotifyTarget {
                user_id: user_id.clone(),
                mobile,
            });
            o.events.push(ev);
            o
        }
        PasscodeDecision::Refuse(r) => {
            let ev = log(
                tx,
                r.outcome,
                Log {
                    reason: Some(r.reason.to_string()),
                    lockout_until_ms: r
                        .retry_at_ms
                        .filter(|_| r.answer == TwoFactorResult::LockedOut),
                    ..base.clone()
                },
                now_ms,
            )
            .await?;
            let mut o = EntryOutcome::new(r.answer, r.reason);
            o.retry_at_ms = r.retry_at_ms;
            o.events.push(ev);
            o
        }
    };
    if let Some((kind, until)) = effects.lockout {
        let reason = match kind {
            CounterKind::LockFailures => "wrong_passcodes",
            _ => "failed_challenges",
        };
        let ev = log(
            tx,
            TwoFactorOutcome::LockoutStarted,
            Log {
                reason: Some(reason.into()),
                lockout_until_ms: Some(until),
                ..base
            },
            now_ms,
        )
        .await?;
        outcome.events.push(ev);
    }
    Ok(outcome)
}

async fn otp(
    tx: &mut Tx,
    lock: &LockRecord,
    challenge_id: u64,
    otp_tag: &[u8; 32],
    limits: &Limits,
    now_ms: u64,
) -> Result<EntryOutcome, sqlx::Error> {
    let org = lock.org.as_str();
    let lock_id = lock.id.as_str();
    const CHALLENGE: &str =
        "SELECT user_id, grant_id, department, expires_at_ms, tries, state, otp_tag \
         FROM tfa_challenges WHERE challenge_id = $1 AND org = $2 AND lock_id = $3";
    let binds = [i(challenge_id), t(org), t(lock_id)];
    let mut row = tx
        .rows::<ChallengeRow>(CHALLENGE, &binds)
        .await?
        .into_iter()
        .next();
    let mut facts = None;
    let mut matches = false;
    if let Some(c) = row.take() {
        // The user's row first (the order the commands take), then the
        // challenge read again under its own lock (PostgreSQL): a revoke,
        // reset or deactivation that committed meanwhile is seen.
        user(tx, org, &c.user_id).await?;
        row = if tx.is_postgres() {
            tx.rows::<ChallengeRow>(&format!("{CHALLENGE} FOR UPDATE"), &binds)
                .await?
                .into_iter()
                .next()
        } else {
            Some(c)
        };
    }
    if let Some(c) = &row {
        let user = user_read(tx, org, &c.user_id).await?;
        let grant_holds = tx
            .scalar::<i64>(
                "SELECT grant_id FROM tfa_grants WHERE grant_id = $1 AND revoked_at_ms IS NULL \
                 AND start_ms <= $2 AND end_ms > $2",
                &[i(u(c.grant_id)), i(now_ms)],
            )
            .await?
            .is_some();
        let user_ok = user.is_some_and(|u| u.active && u.mobile_verified);
        facts = Some(ChallengeFacts {
            state: ChallengeState::parse(&c.state).unwrap_or(ChallengeState::Failed),
            expires_at_ms: u(c.expires_at_ms),
            tries: c.tries.clamp(0, 255) as u8,
            access_holds: grant_holds && user_ok,
        });
        matches = rules::tags_match(&c.otp_tag, otp_tag);
    }
    let decision = rules::decide_otp(facts.as_ref(), matches, limits, now_ms);
    let base = Log {
        org: org.to_string(),
        lock_id: Some(lock_id.to_string()),
        user_id: row.as_ref().map(|c| c.user_id.clone()),
        department: row.as_ref().and_then(|c| c.department.clone()),
        grant_id: row.as_ref().map(|c| u(c.grant_id)),
        challenge_id: row.as_ref().map(|_| challenge_id),
        ..Log::default()
    };
    let mut outcome;
    match &decision {
        OtpDecision::Allow => {
            // Only an open challenge opens the lock, whatever was read.
            let n = tx
                .execute(
                    "UPDATE tfa_challenges SET state = 'allowed', ended_at_ms = $1 \
                     WHERE challenge_id = $2 AND state = 'open'",
                    &[i(now_ms), i(challenge_id)],
                )
                .await?;
            if n == 1 {
                outcome = EntryOutcome::new(TwoFactorResult::Allowed, "allowed");
                outcome
                    .events
                    .push(log(tx, TwoFactorOutcome::Allowed, base.clone(), now_ms).await?);
            } else {
                outcome = EntryOutcome::new(TwoFactorResult::ChallengeEnded, "revoked");
                let ev = log(
                    tx,
                    TwoFactorOutcome::ChallengeEnded,
                    Log {
                        reason: Some("revoked".into()),
                        ..base.clone()
                    },
                    now_ms,
                )
                .await?;
                outcome.events.push(ev);
            }
        }
        OtpDecision::Wrong { tries, tries_left } => {
            tx.execute(
                "UPDATE tfa_challenges SET tries = $1 WHERE challenge_id = $2 AND state = 'open'",
                &[i(u64::from(*tries)), i(challenge_id)],
            )
            .await?;
            outcome = EntryOutcome::new(TwoFactorResult::WrongOtp, "wrong_otp");
            outcome.tries_left = Some(*tries_left);
            outcome.challenge = Some(challenge_id);
            let ev = log(
                tx,
                TwoFactorOutcome::WrongOtp,
                Log {
                    tries_left: Some(*tries_left),
                    ..base.clone()
                },
                now_ms,
            )
            .await?;
            outcome.events.push(ev);
        }
        OtpDecision::End {
            reason,
            new_state,
            tries,
            user_failure: _,
        } => {
            if let Some(state) = new_state {
                tx.execute(
                    "UPDATE tfa_challenges SET state = $1, tries = $2, ended_at_ms = $3 \
                     WHERE challenge_id = $4 AND state = 'open'",
                    &[
                        t(state.as_str()),
                        i(u64::from(*tries)),
                        i(now_ms),
                        i(challenge_id),
                    ],
                )
                .await?;
            }
            outcome = EntryOutcome::new(TwoFactorResult::ChallengeEnded, reason);
            let ev = log(
                tx,
                TwoFactorOutcome::ChallengeEnded,
                Log {
                    reason: Some(reason.to_string()),
                    ..base.clone()
                },
                now_ms,
            )
            .await?;
            outcome.events.push(ev);
        }
    }
    // Every wrong OTP counts toward the user's lock-out, whichever
    // challenge it was typed for; a lock-out ends their open challenges.
    if let (true, Some(c)) = (decision.counts_against_user(), &row) {
        let before = counter(tx, org, CounterKind::UserFailures, &c.user_id).await?;
        let (after, started) = before.fail(now_ms, limits.user_failures);
        put_counter(tx, org, CounterKind::UserFailures, &c.user_id, after).await?;
        if let Some(until) = started {
            end_open_challenges(
                tx,
                ChallengeState::Revoked,
                "org = $3 AND user_id = $4",
                &[t(org), t(&c.user_id)],
                now_ms,
            )
            .await?;
            let ev = log(
                tx,
                TwoFactorOutcome::LockoutStarted,
                Log {
                    org: org.to_string(),
                    reason: Some("failed_challenges".into()),
                    user_id: Some(c.user_id.clone()),
                    lock_id: Some(lock_id.to_string()),
                    lockout_until_ms: Some(until),
                    ..Log::default()
                },
                now_ms,
            )
            .await?;
            outcome.events.push(ev);
        }
    }
    Ok(outcome)
}

/// The OTP of `challenge_id` could not be sent: the challenge ends (if
/// still open) and the failure is logged. Returns the event, or `None`
/// when the challenge had already ended.
pub(super) async fn notifier_failed(
    store: &Store,
    lock: &LockRecord,
    challenge_id: u64,
    reason: &str,
    now_ms: u64,
) -> Result<Option<TwoFactorEvent>, StoreError> {
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "recording a notifier failure", e);
    let mut tx = Tx::begin(store).await.map_err(err)?;
    let row = tx
        .rows::<ChallengeRow>(
            "UPDATE tfa_challenges SET state = 'notifier_failed', ended_at_ms = $1 \
             WHERE challenge_id = $2 AND state = 'open' \
             RETURNING user_id, grant_id, department, expires_at_ms, tries, state, otp_tag",
            &[i(now_ms), i(challenge_id)],
        )
        .await
        .map_err(err)?
        .into_iter()
        .next();
    let event = match row {
        Some(c) => Some(
            log(
                &mut tx,
                TwoFactorOutcome::NotifierFailed,
                Log {
                    org: lock.org.to_string(),
                    reason: Some(reason.to_string()),
                    lock_id: Some(lock.id.to_string()),
                    user_id: Some(c.user_id),
                    department: c.department,
                    grant_id: Some(u(c.grant_id)),
                    challenge_id: Some(challenge_id),
                    ..Log::default()
                },
                now_ms,
            )
            .await
            .map_err(err)?,
        ),
        None => None,
    };
    tx.commit().await.map_err(err)?;
    Ok(event)
}
