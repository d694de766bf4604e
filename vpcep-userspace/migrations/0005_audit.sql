-- The audit trail: one row per write request (committed or failed), written by the same
-- transaction as the change. Not part of `changes`: agents never see it. `at` is RFC 3339
-- UTC with microseconds, so text order is time order.
CREATE TABLE audit (
    request_id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    project_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    resources TEXT NOT NULL,
    result TEXT NOT NULL,
    status BIGINT NOT NULL
);
CREATE INDEX audit_project_at ON audit (project_id, at);
CREATE INDEX audit_at ON audit (at);
