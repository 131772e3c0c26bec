-- 2FA access (PostgreSQL dialect; SQLite has the same tables).
--
-- Secrets: a passcode is kept only as `passcode_key`, Argon2id of the
-- digits under a per-organisation salt derived from the server key (the
-- lock sends only the digits, so the key must be found by value; without
-- the server key the column cannot be attacked offline). An OTP is kept
-- only as `otp_tag`, HMAC-SHA-256 under a key derived from the server key,
-- bound to its challenge.
CREATE TABLE tfa_users (
    org                TEXT    NOT NULL,
    user_id            TEXT    NOT NULL,
    mobile             TEXT,
    mobile_verified    BOOLEAN NOT NULL DEFAULT FALSE,
    active             BOOLEAN NOT NULL DEFAULT TRUE,
    passcode_key       BYTEA,
    passcode_set_at_ms BIGINT,
    updated_at_ms      BIGINT  NOT NULL,
    PRIMARY KEY (org, user_id)
);
-- A passcode names one user in its organisation.
CREATE UNIQUE INDEX tfa_users_passcode ON tfa_users (org, passcode_key);

CREATE TABLE tfa_grants (
    grant_id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org           TEXT   NOT NULL,
    department    TEXT,
    lock_id       TEXT   NOT NULL,
    user_id       TEXT   NOT NULL,
    start_local   TEXT   NOT NULL,
    end_local     TEXT   NOT NULL,
    time_zone     TEXT   NOT NULL,
    start_ms      BIGINT NOT NULL,
    end_ms        BIGINT NOT NULL,
    created_by    TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    updated_at_ms BIGINT NOT NULL
);
-- A passcode at a lock: the user's live grants there.
CREATE INDEX tfa_grants_user_lock ON tfa_grants (org, user_id, lock_id) WHERE revoked_at_ms IS NULL;
-- The Access list: a lock's grants, newest first.
CREATE INDEX tfa_grants_lock ON tfa_grants (org, lock_id, grant_id);

CREATE TABLE tfa_challenges (
    challenge_id  BIGINT  PRIMARY KEY,
    org           TEXT    NOT NULL,
    lock_id       TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    grant_id      BIGINT  NOT NULL,
    department    TEXT,
    otp_tag       BYTEA   NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    expires_at_ms BIGINT  NOT NULL,
    tries         BIGINT  NOT NULL DEFAULT 0,
    state         TEXT    NOT NULL CHECK (state IN ('open', 'allowed', 'failed', 'expired', 'revoked', 'superseded', 'notifier_failed')),
    ended_at_ms   BIGINT
);
-- Open challenges of a user (superseded, revoked).
CREATE INDEX tfa_challenges_open ON tfa_challenges (org, user_id, lock_id) WHERE state = 'open';

-- Rate limits and lock-outs: one fixed-window counter per (scope, subject, counter).
CREATE TABLE tfa_limits (
    org             TEXT   NOT NULL,
    scope           TEXT   NOT NULL CHECK (scope IN ('lock', 'user')),
    subject         TEXT   NOT NULL,
    counter         TEXT   NOT NULL,
    window_start_ms BIGINT NOT NULL,
    count           BIGINT NOT NULL,
    locked_since_ms BIGINT NOT NULL DEFAULT 0,
    locked_until_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (org, scope, subject, counter)
);
CREATE INDEX tfa_limits_locked ON tfa_limits (locked_until_ms) WHERE locked_until_ms > 0;

-- The 2FA activity log: every outcome, as published (no secret in any column).
CREATE TABLE tfa_log (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org              TEXT   NOT NULL,
    outcome          TEXT   NOT NULL,
    reason           TEXT,
    lock_id          TEXT,
    user_id          TEXT,
    department       TEXT,
    grant_id         BIGINT,
    challenge_id     BIGINT,
    tries_left       BIGINT,
    lockout_until_ms BIGINT,
    at_ms            BIGINT NOT NULL
);
CREATE INDEX tfa_log_lock ON tfa_log (org, lock_id, seq);
