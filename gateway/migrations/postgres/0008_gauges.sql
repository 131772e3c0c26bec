-- Indexes for the gauges housekeeping counts every 15 s (gateway::server),
-- so that counting reads only the rows counted, never the whole table.
--
-- Locks whose newest heartbeat reports a low battery (the predicate is
-- schemas::Battery::is_low: below LOW_BATTERY_PERCENT, or level "low"; the
-- counting query repeats it word for word so the planner can use the index).
CREATE INDEX lock_state_battery_low ON lock_state (lock_id) WHERE battery_percent < 30 OR battery_level = 'low';
-- Pending jobs by how long they have waited (since issue: creation or recreation).
CREATE INDEX jobs_pending_issued ON jobs (issued_at_ms) WHERE state = 'pending';
