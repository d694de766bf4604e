-- One schema for SQLite and PostgreSQL: only types and syntax both accept.
--
-- `meta` holds the global revision. Every write transaction starts by bumping it, which
-- serializes writers on both databases (quota and clash checks are atomic under concurrency).
CREATE TABLE meta (
    id BIGINT PRIMARY KEY,
    revision BIGINT NOT NULL,
    -- Changes at or below this revision have been dropped from `changes`.
    compacted BIGINT NOT NULL
);
INSERT INTO meta (id, revision, compacted) VALUES (1, 0, 0);

-- Every resource is a JSON document; the indexed columns are what the queries filter on.
-- ref1/ref2 depend on the kind (see store/mod.rs, `Object::refs`).
CREATE TABLE objects (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    ref1 TEXT NOT NULL,
    ref2 TEXT NOT NULL,
    revision BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX objects_project ON objects (kind, project_id);
CREATE INDEX objects_ref1 ON objects (kind, ref1);
CREATE INDEX objects_ref2 ON objects (kind, ref2);

-- The change log the agents' feed is served from; `op` is `put` or `delete`.
CREATE TABLE changes (
    revision BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    op TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (revision, seq)
);
