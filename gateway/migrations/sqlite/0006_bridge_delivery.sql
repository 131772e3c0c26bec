-- Delivery through bridges (gateway::bridges).
--
-- The gateway protects the commands it sends a bridge as OSCORE requests
-- with its own sender sequence numbers, so it must never use one twice for
-- a bridge, across restarts and instances (RFC 8613 Appendix B.1.1): an
-- instance reserves a block of numbers by raising `seq_limit` in one
-- statement and uses only the numbers below the limit it raised it to.
CREATE TABLE oscore_sender (
    device_id TEXT   NOT NULL PRIMARY KEY,
    seq_limit BIGINT NOT NULL
);
-- Lock, unlock and sync expire unless delivered in time: the sweep finds
-- the pending ones by age.
CREATE INDEX jobs_immediate_pending ON jobs (created_at_ms) WHERE state = 'pending' AND kind IN ('lock', 'unlock', 'sync');
