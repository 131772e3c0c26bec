-- The dispatcher's jobs (SQLite dialect; PostgreSQL has the same tables).
-- A job is pending until the lock reports its result; `in_flight` says it
-- went out and no result is back for this attempt. PIN digits are kept only
-- while the job can still be delivered, sealed under the server key
-- (AES-256-GCM, bound to the lock and access), and erased when it ends.
CREATE TABLE jobs (
    job_id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    org                       TEXT    NOT NULL,
    department                TEXT,
    lock_id                   TEXT    NOT NULL,
    kind                      TEXT    NOT NULL,
    state                     TEXT    NOT NULL CHECK (state IN ('pending', 'completed', 'failed', 'deleted')),
    attempt                   BIGINT  NOT NULL,
    retried_by                TEXT,
    created_at_ms             BIGINT  NOT NULL,
    created_by                TEXT    NOT NULL,
    description               TEXT    NOT NULL,
    pin_name                  TEXT,
    access_id                 TEXT,
    pin_kind                  TEXT,
    pin_type                  TEXT,
    pin_start_s               BIGINT,
    pin_end_s                 BIGINT,
    pin_sealed                BLOB,
    heartbeat_interval_h      BIGINT,
    activity_log_interval_min BIGINT,
    issued_at_ms              BIGINT  NOT NULL,
    deliveries                BIGINT  NOT NULL DEFAULT 0,
    in_flight                 BOOLEAN NOT NULL DEFAULT FALSE,
    last_sync_ms              BIGINT,
    last_sync_by              TEXT,
    failure_reason            TEXT,
    version                   BIGINT  NOT NULL,
    updated_at_ms             BIGINT  NOT NULL
);
-- Delivery: a lock's pending jobs in creation order.
CREATE INDEX jobs_pending ON jobs (lock_id, job_id) WHERE state = 'pending';
-- The Jobs List: an organisation's jobs, newest first.
CREATE INDEX jobs_org ON jobs (org, job_id);
-- The rules of an access (recreate versus delete PIN).
CREATE INDEX jobs_access ON jobs (lock_id, access_id, job_id);

-- Custom PINs a lock holds or will hold (pending creation), for the
-- 199-PIN limit and for deletes. A row goes when its PIN is deleted or its
-- creation fails or is deleted.
CREATE TABLE pins (
    lock_id   TEXT   NOT NULL,
    access_id TEXT   NOT NULL,
    pin_type  TEXT   NOT NULL,
    start_s   BIGINT NOT NULL,
    end_s     BIGINT,
    state     TEXT   NOT NULL CHECK (state IN ('pending', 'active')),
    job_id    BIGINT NOT NULL,
    PRIMARY KEY (lock_id, access_id)
);

-- Every state-changing command by idempotency key, with its answer: a
-- repeated command gets the first answer and changes nothing.
CREATE TABLE commands (
    org             TEXT   NOT NULL,
    idempotency_key TEXT   NOT NULL,
    fingerprint     TEXT   NOT NULL,
    answer          TEXT   NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (org, idempotency_key)
);
