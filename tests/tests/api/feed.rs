//! The agents' change feed: snapshot, streaming watch, relist, and two API replicas.
use std::time::Duration;

use serde_json::{Value, json};
use vpcep::api::Config;

use crate::{
    fixtures::*,
    harness::{Db, Env, OPERATOR_TOKEN, test_config},
};

both!(
    snapshot_and_watch,
    relist_when_behind,
    two_replicas,
    agent_client
);

/// A streaming watch connection, read line by line.
struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Watch {
    async fn open(base: &str, after: i64) -> Self {
        let resp = reqwest::Client::new()
            .get(format!("{base}/feed/watch?after={after}"))
            .header("X-Auth-Token", OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        Self {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next message, or None when the stream ends; panics after 10 s.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("no feed message within 10 s")
                .unwrap()?;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// Skips bookmarks until a change for `kind`/`id` arrives.
    async fn until_change(&mut self, kind: &str, id: &str) -> Value {
        loop {
            let m = self.next().await.expect("stream ended");
            if m["type"] == "change" && m["kind"] == kind && m["id"] == id {
                return m;
            }
        }
    }
}

async fn snapshot_and_watch(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let op = env.operator();
    let snap = env.agent().get("/feed/snapshot").await.ok();
    let rev = snap["revision"].as_i64().unwrap();
    assert!(rev > 0);
    let kinds: Vec<&str> = snap["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    for k in ["vpc", "subnet", "port", "node"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert!(
        snap["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == w.backend_port && o["object"]["ip"] == "10.0.0.5")
    );

    // Watch from the snapshot: a bookmark first, then the changes as they happen.
    let mut watch = Watch::open(&env.server.url(), rev).await;
    let first = watch.next().await.unwrap();
    assert_eq!(first, json!({"type": "bookmark", "revision": rev}));
    let p = env.provider();
    let s = available_service(&p, service_body(&w)).await;
    let sid = s["id"].as_str().unwrap();
    let m = watch.until_change("endpoint_service", sid).await;
    assert_eq!(m["op"], "put");
    assert!(m["revision"].as_i64().unwrap() > rev);
    let m = watch.until_change("endpoint_service", sid).await;
    assert_eq!(m["object"]["status"], "available");
    op.delete(&format!("/inventory/ports/{}", w.backend_port))
        .await
        .ok();
    let m = watch.until_change("port", &w.backend_port).await;
    assert_eq!(m["op"], "delete");
    assert_eq!(m["object"], Value::Null);
    // The same transaction suspended the service.
    let m = watch.until_change("endpoint_service", sid).await;
    assert_eq!(m["object"]["status"], "suspended");

    // Watching from revision 0 replays everything still in the log, in order.
    let mut all = Watch::open(&env.server.url(), 0).await;
    let mut last = 0;
    loop {
        let m = all.next().await.unwrap();
        if m["type"] == "bookmark" {
            break;
        }
        let r = m["revision"].as_i64().unwrap();
        assert!(r >= last);
        last = r;
    }
    env.operator()
        .get("/feed/watch?after=-1")
        .await
        .err(400, "after");
    env.operator().get("/feed/watch").await.err(400, "after");
}

async fn relist_when_behind(db: Db) {
    let config = Config {
        feed_retain: 3,
        ..test_config()
    };
    let env = Env::with_config(db, config).await;
    let op = env.operator();
    for i in 0..10 {
        op.put(
            &format!("/inventory/nodes/n{i}"),
            json!({"underlay_ip": "192.0.2.9"}),
        )
        .await
        .ok();
    }
    let mut watch = Watch::open(&env.server.url(), 1).await;
    let m = watch.next().await.unwrap();
    assert_eq!(m["type"], "relist");
    assert!(watch.next().await.is_none(), "the stream ends after relist");
    // A watcher from the current revision is fine; one from the future must relist.
    let rev = env.agent().get("/feed/snapshot").await.ok()["revision"]
        .as_i64()
        .unwrap();
    let mut ok = Watch::open(&env.server.url(), rev).await;
    assert_eq!(ok.next().await.unwrap()["type"], "bookmark");
    let mut ahead = Watch::open(&env.server.url(), rev + 100).await;
    assert_eq!(ahead.next().await.unwrap()["type"], "relist");
}

async fn two_replicas(db: Db) {
    let env = Env::new(db).await;
    let b = env.replica(test_config()).await;
    let snap = env.agent().get("/feed/snapshot").await.ok();
    let rev = snap["revision"].as_i64().unwrap();
    let mut watch_b = Watch::open(&b.url(), rev).await;
    assert_eq!(watch_b.next().await.unwrap()["type"], "bookmark");
    // Written through replica A, seen on replica B's feed.
    let op = env.operator();
    let v = vpc(&op, "proj-x", "10.9.0.0/16").await;
    let m = watch_b.until_change("vpc", v["id"].as_str().unwrap()).await;
    assert_eq!(m["object"]["cidr"], "10.9.0.0/16");
    // And B serves what A wrote.
    let via_b = crate::harness::Client::new(
        &b.url(),
        crate::harness::Auth::Token(OPERATOR_TOKEN.into()),
        "",
    );
    via_b
        .get(&format!("/inventory/vpcs/{}", v["id"].as_str().unwrap()))
        .await
        .ok();
}

/// The agent's client: register, list, watch, apply, report the applied revision.
async fn agent_client(db: Db) {
    use vpcep::agent::feed_client::{Event, FeedClient};

    let env = Env::new(db).await;
    let agent = FeedClient::new(&env.server.url(), crate::harness::AGENT1_TOKEN);
    let node = agent.register_node("node1", "192.0.2.1").await.unwrap();
    assert_eq!(node["snat_ip"], "198.19.128.1");
    let snap = agent.snapshot().await.unwrap();
    assert!(
        snap.objects
            .iter()
            .any(|o| o.kind == "node" && o.id == "node1")
    );
    let mut watch = agent.watch(snap.revision).await.unwrap();
    assert_eq!(
        watch.next().await.unwrap(),
        Some(Event::Bookmark {
            revision: snap.revision
        })
    );
    let op = env.operator();
    let v = vpc(&op, "proj-a", "10.1.0.0/16").await;
    let applied = loop {
        match watch.next().await.unwrap().unwrap() {
            Event::Change {
                revision,
                kind,
                id,
                op,
                ..
            } if kind == "vpc" => {
                assert_eq!(id, v["id"].as_str().unwrap());
                assert_eq!(op, "put");
                break revision;
            }
            _ => {}
        }
    };
    agent.report_applied("node1", applied).await.unwrap();
    let n = op.get("/inventory/nodes/node1").await.ok();
    assert_eq!(n["applied_revision"], applied);
    // Wrong node and wrong token are refused.
    assert!(agent.report_applied("node2", 1).await.is_err());
    assert!(
        FeedClient::new(&env.server.url(), "nope")
            .snapshot()
            .await
            .is_err()
    );
}
