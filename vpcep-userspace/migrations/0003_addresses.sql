-- Addresses held in each subnet by ports and endpoints (`Object::address`), written by the
-- same transaction as the object, so that picking a free address is an indexed lookup instead
-- of reading every object of the subnet. The primary key makes a double assignment impossible.
CREATE TABLE addresses (
    scope TEXT NOT NULL,
    ip BIGINT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (scope, ip)
);
CREATE INDEX addresses_owner ON addresses (kind, id);

-- Per scope, where the search for the lowest free address may start: every address of the
-- searched range below `low` is taken (lowered again when one of them is released).
CREATE TABLE address_low (
    scope TEXT PRIMARY KEY,
    low BIGINT NOT NULL
);

-- Kinds whose objects written before this migration still have to be indexed; the control
-- plane does it once at start (`Store::fill_addresses`) and removes the row.
CREATE TABLE address_fill (
    kind TEXT PRIMARY KEY
);
INSERT INTO address_fill (kind) VALUES ('port');
INSERT INTO address_fill (kind) VALUES ('endpoint');
