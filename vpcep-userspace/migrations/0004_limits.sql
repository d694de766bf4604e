-- Endpoint services written before per-endpoint connection limits existed get the region's
-- default limits (`--default-max-connections`, `--default-max-new-connections-per-second`)
-- once: the control plane fills them in at start (`api::fill_service_limits`) and removes
-- the row, so that every agent then applies the same limits.
CREATE TABLE limits_fill (
    kind TEXT PRIMARY KEY
);
INSERT INTO limits_fill (kind) VALUES ('endpoint_service');
