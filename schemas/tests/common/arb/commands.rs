//! The dashboard's commands (every one the request schema allows) and the
//! 2FA answers to them.

use super::{all_activity_minutes, id, mobile, text, ALL_JOB_STATES, ALL_PIN_KINDS, ALL_PIN_TYPES};
use proptest::prelude::*;
use proptest::sample::select;
use schemas::command::{
    Command, CommandRequest, CommandResponse, CommandResult, LockoutView, ResponseStatus,
    TwoFactorGrantView, TwoFactorUserView,
};
use schemas::twofa::mask_mobile;
use schemas::HeartbeatInterval;

/// Grant statuses (`TwoFactorGrantView::status`).
pub const GRANT_STATUSES: [&str; 4] = ["active", "scheduled", "expired", "revoked"];
/// Lock-out scopes with their reasons (`LockoutView`): a lock for wrong
/// passcodes, a user for failed challenges.
pub const LOCKOUT_KINDS: [(&str, &str); 2] =
    [("lock", "wrong_passcodes"), ("user", "failed_challenges")];

/// A grant's local time, `YYYY-MM-DDTHH:MM[:SS]`.
pub fn local_time() -> impl Strategy<Value = String> {
    "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?"
}

/// Names and free text the dashboard sends: 1 to 64 characters.
fn name() -> impl Strategy<Value = String> {
    prop_oneof!["\\PC{1,64}", "[ -~]{1,64}"]
}

fn job_id() -> impl Strategy<Value = u64> {
    1..=u64::MAX
}

/// The `type` of every command, in `Command`'s order.
pub const COMMAND_TYPES: [&str; 25] = [
    "create_custom_pin",
    "delete_pin",
    "set_intervals",
    "link_bridge",
    "unlink_bridge",
    "lock",
    "unlock",
    "sync",
    "delete_job",
    "recreate_job",
    "get_job",
    "set_user_mobile",
    "verify_user_mobile",
    "deactivate_user",
    "reactivate_user",
    "generate_2fa_passcode",
    "reset_2fa_passcode",
    "grant_2fa",
    "edit_2fa_grant",
    "revoke_2fa_grant",
    "get_2fa_user",
    "list_2fa_grants",
    "list_2fa_lockouts",
    "clear_2fa_lockout",
    "list_jobs",
];

/// The index of `c`'s variant in [`COMMAND_TYPES`]. Fails to compile when
/// `Command` gains a variant: list its type there and give it a strategy in
/// [`commands`] (the tests hold the three and the request schema together).
pub fn command_index(c: &Command) -> usize {
    match c {
        Command::CreateCustomPin { .. } => 0,
        Command::DeletePin { .. } => 1,
        Command::SetIntervals { .. } => 2,
        Command::LinkBridge { .. } => 3,
        Command::UnlinkBridge { .. } => 4,
        Command::Lock { .. } => 5,
        Command::Unlock { .. } => 6,
        Command::Sync { .. } => 7,
        Command::DeleteJob { .. } => 8,
        Command::RecreateJob { .. } => 9,
        Command::GetJob { .. } => 10,
        Command::SetUserMobile { .. } => 11,
        Command::VerifyUserMobile { .. } => 12,
        Command::DeactivateUser { .. } => 13,
        Command::ReactivateUser { .. } => 14,
        Command::GenerateTwoFactorPasscode { .. } => 15,
        Command::ResetTwoFactorPasscode { .. } => 16,
        Command::GrantTwoFactor { .. } => 17,
        Command::EditTwoFactorGrant { .. } => 18,
        Command::RevokeTwoFactorGrant { .. } => 19,
        Command::GetTwoFactorUser { .. } => 20,
        Command::ListTwoFactorGrants { .. } => 21,
        Command::ListTwoFactorLockouts {} => 22,
        Command::ClearTwoFactorLockout { .. } => 23,
        Command::ListJobs { .. } => 24,
    }
}

/// One strategy per command, named by its `type`: every command the
/// request schema allows, with the values it allows.
pub fn commands() -> Vec<(&'static str, BoxedStrategy<Command>)> {
    use proptest::option::of;
    let heartbeat_hours = select(HeartbeatInterval::ALLOWED_HOURS.to_vec()).prop_map(u16::from);
    vec![
        (
            "create_custom_pin",
            (
                (id(), name(), "[0-9]{4,10}"),
                (
                    select(ALL_PIN_TYPES),
                    any::<u64>(),
                    of(any::<u64>()),
                    any::<u16>(),
                ),
            )
                .prop_map(
                    |((lock_id, pin_name, pin), (pin_type, start_s, end_s, algo_pins_active))| {
                        Command::CreateCustomPin {
                            lock_id,
                            pin_name,
                            pin,
                            pin_type,
                            start_s,
                            end_s,
                            algo_pins_active,
                        }
                    },
                )
                .boxed(),
        ),
        (
            "delete_pin",
            (id(), name(), select(ALL_PIN_KINDS), of(text()))
                .prop_map(
                    |(lock_id, access_id, pin_kind, pin_name)| Command::DeletePin {
                        lock_id,
                        access_id,
                        pin_kind,
                        pin_name,
                    },
                )
                .boxed(),
        ),
        (
            "set_intervals",
            (
                id(),
                of(heartbeat_hours),
                of(select(all_activity_minutes())),
            )
                .prop_map(
                    |(lock_id, heartbeat_interval_h, activity_log_interval_min)| {
                        Command::SetIntervals {
                            lock_id,
                            heartbeat_interval_h,
                            activity_log_interval_min,
                        }
                    },
                )
                .boxed(),
        ),
        (
            "link_bridge",
            (id(), id())
                .prop_map(|(lock_id, bridge_id)| Command::LinkBridge { lock_id, bridge_id })
                .boxed(),
        ),
        (
            "unlink_bridge",
            id().prop_map(|lock_id| Command::UnlinkBridge { lock_id })
                .boxed(),
        ),
        (
            "lock",
            id().prop_map(|lock_id| Command::Lock { lock_id }).boxed(),
        ),
        (
            "unlock",
            id().prop_map(|lock_id| Command::Unlock { lock_id }).boxed(),
        ),
        (
            "sync",
            id().prop_map(|lock_id| Command::Sync { lock_id }).boxed(),
        ),
        (
            "delete_job",
            job_id()
                .prop_map(|job_id| Command::DeleteJob { job_id })
                .boxed(),
        ),
        (
            "recreate_job",
            job_id()
                .prop_map(|job_id| Command::RecreateJob { job_id })
                .boxed(),
        ),
        (
            "get_job",
            job_id()
                .prop_map(|job_id| Command::GetJob { job_id })
                .boxed(),
        ),
        (
            "list_jobs",
            (
                of(id()),
                of(select(ALL_JOB_STATES)),
                of(1..=100u32),
                of(job_id()),
            )
                .prop_map(|(lock_id, state, limit, before_job_id)| Command::ListJobs {
                    lock_id,
                    state,
                    limit,
                    before_job_id,
                })
                .boxed(),
        ),
        (
            "set_user_mobile",
            (id(), mobile())
                .prop_map(|(user_id, mobile)| Command::SetUserMobile { user_id, mobile })
                .boxed(),
        ),
        (
            "verify_user_mobile",
            (id(), mobile())
                .prop_map(|(user_id, mobile)| Command::VerifyUserMobile { user_id, mobile })
                .boxed(),
        ),
        (
            "deactivate_user",
            id().prop_map(|user_id| Command::DeactivateUser { user_id })
                .boxed(),
        ),
        (
            "reactivate_user",
            id().prop_map(|user_id| Command::ReactivateUser { user_id })
                .boxed(),
        ),
        (
            "generate_2fa_passcode",
            id().prop_map(|user_id| Command::GenerateTwoFactorPasscode { user_id })
                .boxed(),
        ),
        (
            "reset_2fa_passcode",
            id().prop_map(|user_id| Command::ResetTwoFactorPasscode { user_id })
                .boxed(),
        ),
        (
            "grant_2fa",
            (id(), id(), local_time(), local_time())
                .prop_map(|(lock_id, user_id, start, end)| Command::GrantTwoFactor {
                    lock_id,
                    user_id,
                    start,
                    end,
                })
                .boxed(),
        ),
        (
            "edit_2fa_grant",
            (job_id(), local_time())
                .prop_map(|(grant_id, end)| Command::EditTwoFactorGrant { grant_id, end })
                .boxed(),
        ),
        (
            "revoke_2fa_grant",
            job_id()
                .prop_map(|grant_id| Command::RevokeTwoFactorGrant { grant_id })
                .boxed(),
        ),
        (
            "get_2fa_user",
            id().prop_map(|user_id| Command::GetTwoFactorUser { user_id })
                .boxed(),
        ),
        (
            "list_2fa_grants",
            (of(id()), of(id()), of(1..=100u32), of(job_id()))
                .prop_map(|(lock_id, user_id, limit, before_grant_id)| {
                    Command::ListTwoFactorGrants {
                        lock_id,
                        user_id,
                        limit,
                        before_grant_id,
                    }
                })
                .boxed(),
        ),
        (
            "list_2fa_lockouts",
            Just(Command::ListTwoFactorLockouts {}).boxed(),
        ),
        (
            "clear_2fa_lockout",
            // Exactly one of the two.
            (id(), any::<bool>())
                .prop_map(|(id, lock)| Command::ClearTwoFactorLockout {
                    lock_id: lock.then(|| id.clone()),
                    user_id: (!lock).then_some(id),
                })
                .boxed(),
        ),
    ]
}

pub fn command_request(command: BoxedStrategy<Command>) -> impl Strategy<Value = CommandRequest> {
    (
        (name(), name(), name()),
        of_reply_to(),
        proptest::option::of(id()),
        command,
    )
        .prop_map(
            |((correlation_id, idempotency_key, requested_by), reply_to, department, command)| {
                CommandRequest {
                    correlation_id,
                    idempotency_key,
                    reply_to,
                    requested_by,
                    department,
                    command,
                }
            },
        )
}

/// A reply topic under `rsp/v1/` without wildcards, or none.
fn of_reply_to() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("rsp/v1/[A-Za-z0-9._/-]{1,40}")
}

pub fn twofa_user_view() -> impl Strategy<Value = TwoFactorUserView> {
    (
        id(),
        proptest::option::of(mobile().prop_map(|m| mask_mobile(&m))),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(
            |(
                user_id,
                mobile_masked,
                (mobile_verified, active, has_passcode),
                passcode_set_at_ms,
                locked_out_until_ms,
                updated_at_ms,
            )| TwoFactorUserView {
                user_id,
                mobile_masked,
                mobile_verified,
                active,
                has_passcode,
                passcode_set_at_ms,
                locked_out_until_ms,
                updated_at_ms,
            },
        )
}

pub fn twofa_grant_view() -> impl Strategy<Value = TwoFactorGrantView> {
    let who = (job_id(), id(), proptest::option::of(id()), id(), id());
    let when = (
        local_time(),
        local_time(),
        select(vec![
            "Asia/Singapore",
            "UTC",
            "America/Argentina/Buenos_Aires",
        ]),
        any::<u64>(),
        any::<u64>(),
    );
    let record = (
        select(GRANT_STATUSES.to_vec()),
        name(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
    );
    (who, when, record).prop_map(
        |(
            (grant_id, org, department, lock_id, user_id),
            (start, end, time_zone, start_ms, end_ms),
            (status, created_by, created_at_ms, revoked_at_ms, updated_at_ms),
        )| TwoFactorGrantView {
            grant_id,
            org,
            department,
            lock_id,
            user_id,
            start,
            end,
            time_zone: time_zone.to_string(),
            start_ms,
            end_ms,
            status: status.to_string(),
            created_by,
            created_at_ms,
            revoked_at_ms,
            updated_at_ms,
        },
    )
}

pub fn lockout_view() -> impl Strategy<Value = LockoutView> {
    (
        select(LOCKOUT_KINDS.to_vec()),
        id(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|((scope, reason), id, since_ms, until_ms)| LockoutView {
            scope: scope.to_string(),
            id,
            reason: reason.to_string(),
            since_ms,
            until_ms,
        })
}

/// Every 2FA result a command answer carries.
pub fn twofa_command_result() -> impl Strategy<Value = CommandResult> {
    prop_oneof![
        twofa_user_view().prop_map(|user| CommandResult::TwoFactorUser { user }),
        (id(), "[0-9]{8}", any::<bool>(), any::<u64>()).prop_map(
            |(user_id, passcode, shown_before, set_at_ms)| CommandResult::TwoFactorPasscode {
                user_id,
                // A repeated request gets the stored answer, without the passcode.
                passcode: (!shown_before).then_some(passcode),
                shown_before,
                set_at_ms,
            }
        ),
        twofa_grant_view().prop_map(|grant| CommandResult::TwoFactorGrant { grant }),
        (
            prop::collection::vec(twofa_grant_view(), 0..4),
            proptest::option::of(job_id())
        )
            .prop_map(|(grants, next_before)| CommandResult::TwoFactorGrants {
                grants,
                next_before
            }),
        prop::collection::vec(lockout_view(), 0..4)
            .prop_map(|lockouts| CommandResult::TwoFactorLockouts { lockouts }),
    ]
}

/// An `ok` answer carrying `result`.
pub fn ok_response(
    result: impl Strategy<Value = CommandResult>,
) -> impl Strategy<Value = CommandResponse> {
    (name(), name(), any::<bool>(), result).prop_map(
        |(correlation_id, idempotency_key, replayed, result)| CommandResponse {
            correlation_id,
            idempotency_key,
            replayed,
            status: ResponseStatus::Ok,
            result: Some(result),
            error: None,
        },
    )
}
