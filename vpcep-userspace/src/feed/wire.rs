//! The feed's wire format, shared by the server and the agent: the snapshot document and the
//! watch stream's messages (one JSON object per line).
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds an agent needs to compute its node's maps.
pub const KINDS: [&str; 7] = [
    "vpc",
    "subnet",
    "port",
    "node",
    "endpoint_service",
    "endpoint",
    "permission",
];

/// One object of a snapshot, as stored (kind: `vpc`, `subnet`, `port`, `node`,
/// `endpoint_service`, `endpoint`, `permission`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotObject {
    pub kind: String,
    pub id: String,
    pub revision: i64,
    pub object: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub revision: i64,
    pub objects: Vec<SnapshotObject>,
}

/// A message of the watch stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// An object was written (`op` = `put`, whole object) or removed (`delete`, null).
    Change {
        revision: i64,
        kind: String,
        id: String,
        op: String,
        object: Value,
    },
    /// Caught up to this revision (also sent as a heartbeat).
    Bookmark { revision: i64 },
    /// Too far behind (or ahead): take a new snapshot. The stream ends.
    Relist { revision: i64 },
    /// The server failed while streaming; watch again.
    Error,
}
