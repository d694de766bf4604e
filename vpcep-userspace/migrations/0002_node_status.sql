-- What each node's agent reports it has applied. Kept out of `objects` on purpose: a report
-- is not a desired-state change and must not wake every watcher.
CREATE TABLE node_status (
    node TEXT PRIMARY KEY,
    applied_revision BIGINT NOT NULL,
    applied_at TEXT NOT NULL
);
