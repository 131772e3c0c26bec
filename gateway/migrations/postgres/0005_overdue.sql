-- Overdue locks (dispatcher::presence): set when a lock's deadline
-- (online_until_ms, its due heartbeat plus the grace) has passed and an
-- instance claimed the report, cleared when a newer heartbeat moved the
-- deadline and an instance claimed the return. Each claim is one UPDATE
-- whose WHERE is re-checked under the row lock, so the dashboard hears of
-- each once, whichever instance asks.
ALTER TABLE lock_state ADD COLUMN overdue_since_ms BIGINT;
CREATE INDEX lock_state_overdue ON lock_state (overdue_since_ms) WHERE overdue_since_ms IS NOT NULL;
