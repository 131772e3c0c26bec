-- Each registered device's key: its generation (1 at registration, +1 at
-- every rotation; its OSCORE context is found by the device's ID Context,
-- lk/{id} or br/{id}, see schemas::security), its master
-- secret wrapped under the server key (AES-256-GCM; `kek_id` names the
-- server key, the AAD binds the wrap to the device and generation), and the
-- Argon2id hash of the MQTT password derived from the secret.
CREATE TABLE device_keys (
    device_kind        TEXT    NOT NULL CHECK (device_kind IN ('lock', 'bridge')),
    device_id          TEXT    NOT NULL,
    generation         BIGINT  NOT NULL,
    kek_id             TEXT    NOT NULL,
    nonce              BLOB    NOT NULL,
    wrapped_secret     BLOB    NOT NULL,
    mqtt_password_hash TEXT    NOT NULL,
    created_at_ms      BIGINT  NOT NULL,
    PRIMARY KEY (device_kind, device_id)
);

-- OSCORE replay state per device (RFC 8613 §7.4): the highest sequence
-- number accepted and the window below it as a bitmap, written in the same
-- transaction as the reports it let through, so a restart (or another
-- instance) never accepts a replay.
CREATE TABLE oscore_replay (
    device_kind TEXT   NOT NULL,
    device_id   TEXT   NOT NULL,
    generation  BIGINT NOT NULL,
    highest     BIGINT NOT NULL,
    window_bits BIGINT NOT NULL,
    PRIMARY KEY (device_kind, device_id)
);
