-- When each lock stops counting as online: its newest heartbeat's receive
-- time plus the heartbeat interval it reported plus a grace
-- (dispatcher::presence). Indexed, so counting the online locks is one range
-- scan whichever instance asks. Existing rows get the deadline their stored
-- heartbeat implies (grace: 600 000 ms). Same statements on both engines.
ALTER TABLE lock_state ADD COLUMN online_until_ms BIGINT NOT NULL DEFAULT 0;
UPDATE lock_state SET online_until_ms = received_at_ms + heartbeat_interval_h * 3600000 + 600000;
CREATE INDEX lock_state_online_until_ms ON lock_state (online_until_ms);
