-- Registered devices and their telemetry (PostgreSQL dialect; the SQLite
-- migration has the same tables and columns). Unsigned protocol numbers are
-- stored as BIGINT; enums as their snake_case names.

CREATE TABLE bridges (
    bridge_id            TEXT    NOT NULL PRIMARY KEY,
    org                  TEXT    NOT NULL,
    -- NULL until the bridge first reports its connectivity.
    online               BOOLEAN,
    status_changed_at_ms BIGINT,
    registered_at_ms     BIGINT  NOT NULL
);

CREATE TABLE locks (
    lock_id                   TEXT   NOT NULL PRIMARY KEY,
    model                     TEXT   NOT NULL,
    imei                      TEXT,
    bluetooth_id              TEXT   NOT NULL,
    org                       TEXT   NOT NULL,
    -- ';'-joined department ids (ids cannot contain ';'); empty in a flat organisation.
    departments               TEXT   NOT NULL,
    time_zone                 TEXT   NOT NULL,
    heartbeat_interval_h      BIGINT NOT NULL,
    activity_log_interval_min BIGINT NOT NULL,
    bridge_id                 TEXT   REFERENCES bridges (bridge_id),
    transport                 TEXT   NOT NULL CHECK (transport IN ('coap', 'mqtt', 'bridge')),
    registered_at_ms          BIGINT NOT NULL
);
CREATE INDEX locks_bridge_id ON locks (bridge_id);

-- Bumped by every fleet import, so that running instances notice and reload
-- their registry with one cheap query.
CREATE TABLE registry_version (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    version   BIGINT  NOT NULL
);
INSERT INTO registry_version (singleton, version) VALUES (1, 0);

-- History tables carry no foreign keys: the ingest path authorises every
-- report against the registry first, and a constraint failure here would fail
-- the whole group commit for every device in it (and would make every insert
-- take a row lock on its lock's registry row).
CREATE TABLE heartbeats (
    lock_id                   TEXT   NOT NULL,
    seq                       BIGINT NOT NULL,
    device_time               BIGINT NOT NULL,
    received_at_ms            BIGINT NOT NULL,
    transport                 TEXT   NOT NULL,
    bridge_id                 TEXT,
    battery_percent           BIGINT,
    battery_level             TEXT,
    signal_db                 BIGINT NOT NULL,
    signal_quality            TEXT   NOT NULL,
    carrier                   TEXT   NOT NULL,
    channel_earfcn            BIGINT,
    channel_pci               BIGINT,
    channel_cell_id           BIGINT,
    channel_band              BIGINT,
    lock_state                TEXT   NOT NULL,
    door_state                TEXT   NOT NULL,
    firmware                  TEXT   NOT NULL,
    heartbeat_interval_h      BIGINT NOT NULL,
    activity_log_interval_min BIGINT NOT NULL,
    PRIMARY KEY (lock_id, seq)
);
CREATE INDEX heartbeats_received_at_ms ON heartbeats (received_at_ms);

CREATE TABLE activity_events (
    lock_id        TEXT   NOT NULL,
    event_seq      BIGINT NOT NULL,
    batch_seq      BIGINT NOT NULL,
    time           BIGINT NOT NULL,
    kind           TEXT   NOT NULL,
    actor          TEXT,
    received_at_ms BIGINT NOT NULL,
    transport      TEXT   NOT NULL,
    bridge_id      TEXT,
    PRIMARY KEY (lock_id, event_seq)
);
CREATE INDEX activity_events_received_at_ms ON activity_events (received_at_ms);

-- The newest heartbeat per lock (highest seq), for change detection after a restart.
CREATE TABLE lock_state (
    lock_id                   TEXT   NOT NULL PRIMARY KEY,
    seq                       BIGINT NOT NULL,
    device_time               BIGINT NOT NULL,
    received_at_ms            BIGINT NOT NULL,
    battery_percent           BIGINT,
    battery_level             TEXT,
    signal_db                 BIGINT NOT NULL,
    signal_quality            TEXT   NOT NULL,
    carrier                   TEXT   NOT NULL,
    lock_state                TEXT   NOT NULL,
    door_state                TEXT   NOT NULL,
    firmware                  TEXT   NOT NULL,
    heartbeat_interval_h      BIGINT NOT NULL,
    activity_log_interval_min BIGINT NOT NULL
);

CREATE TABLE bridge_connectivity (
    -- Surrogate key: lets retention delete in bounded chunks.
    id        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bridge_id TEXT    NOT NULL,
    at_ms     BIGINT  NOT NULL,
    online    BOOLEAN NOT NULL,
    cause     TEXT    NOT NULL
);
CREATE INDEX bridge_connectivity_at_ms ON bridge_connectivity (at_ms);
