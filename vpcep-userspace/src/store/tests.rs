//! The address index against a real SQLite file, and the database URLs.
use serde::{Deserialize, Serialize};

use super::{Backend, Object, Store, pool::normalize_url};

#[derive(Serialize, Deserialize)]
struct Nic {
    id: String,
    scope: String,
    ip: u32,
}

impl Object for Nic {
    const KIND: &'static str = "port";
    fn id(&self) -> String {
        self.id.clone()
    }
    fn project(&self) -> String {
        String::new()
    }
    const ADDRESSED: bool = true;
    fn address(&self) -> Option<(String, u32)> {
        Some((self.scope.clone(), self.ip))
    }
}

fn nic(id: &str, scope: &str, ip: u32) -> Nic {
    Nic {
        id: id.into(),
        scope: scope.into(),
        ip,
    }
}

async fn put(store: &Store, n: Nic) {
    let mut tx = store.write().await.unwrap();
    tx.put(&n).await.unwrap();
    tx.commit().await.unwrap();
}

async fn lowest(store: &Store) -> Option<u32> {
    let mut tx = store.write().await.unwrap();
    // 1..=6 with 3 reserved (a gateway).
    let ip = tx.lowest_free_address("s", 1, 6, &[3]).await.unwrap();
    tx.commit().await.unwrap();
    ip
}

/// A directory removed on drop, also when an assertion fails.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new SQLite store in its own temp directory.
async fn temp_store(tag: &str) -> (Dir, Store) {
    let guard = Dir(std::env::temp_dir().join(format!("vpcep-store-{tag}-{}", std::process::id())));
    std::fs::create_dir_all(&guard.0).unwrap();
    let url = format!("sqlite://{}", guard.0.join("v.db").display());
    (guard, Store::open(&url, 1000).await.unwrap())
}

#[tokio::test]
async fn address_index() {
    let (_dir, store) = temp_store("address").await;
    // What the control plane does at start; nothing to index in a new database.
    assert_eq!(store.fill_addresses::<Nic>().await.unwrap(), 0);
    for (id, ip) in [("a", 1), ("b", 2), ("d", 4)] {
        put(&store, nic(id, "s", ip)).await;
    }
    put(&store, nic("other", "t", 5)).await;
    assert_eq!(lowest(&store).await, Some(5), "reserved and held skipped");
    put(&store, nic("e", "s", 5)).await;
    put(&store, nic("f", "s", 6)).await;
    assert_eq!(lowest(&store).await, None, "full");
    let mut tx = store.write().await.unwrap();
    tx.delete::<Nic>("b").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(lowest(&store).await, Some(2), "freed address reused");
    // Moving an object releases its old address; rewriting it unchanged keeps it.
    put(&store, nic("a", "t", 1)).await;
    put(&store, nic("d", "s", 4)).await;
    assert_eq!(lowest(&store).await, Some(1));
    let mut tx = store.write().await.unwrap();
    assert!(tx.address_taken("s", 4).await.unwrap());
    assert!(!tx.address_taken("s", 1).await.unwrap());
    // A double assignment is refused by the index itself.
    assert!(tx.put(&nic("g", "s", 4)).await.is_err());
    drop(tx);

    // A database from before the index: filled once from the stored objects.
    for sql in [
        "DELETE FROM addresses",
        "DELETE FROM address_low",
        "INSERT INTO address_fill (kind) VALUES ('port')",
    ] {
        sqlx::query(sql).execute(&store.pool).await.unwrap();
    }
    assert_eq!(lowest(&store).await, Some(1), "empty index");
    // `lowest` left a bound behind that the fill does not know about; a real database
    // from before the index has none.
    sqlx::query("DELETE FROM address_low")
        .execute(&store.pool)
        .await
        .unwrap();
    assert_eq!(store.fill_addresses::<Nic>().await.unwrap(), 5);
    assert_eq!(store.fill_addresses::<Nic>().await.unwrap(), 0, "only once");
    assert_eq!(lowest(&store).await, Some(1));
    put(&store, nic("h", "s", 1)).await;
    assert_eq!(lowest(&store).await, Some(2));
    put(&store, nic("i", "s", 2)).await;
    assert_eq!(lowest(&store).await, None);
}

/// The snapshot's exact bytes, which the agents parse as they stream in.
#[tokio::test]
async fn snapshot_document() {
    let (_dir, store) = temp_store("snapshot").await;
    let empty = store.snapshot_json(&["port"]).await.unwrap();
    assert_eq!(empty, r#"{"revision":0,"objects":[]}"#);
    put(&store, nic("b", "s", 2)).await;
    put(&store, nic("a\"", "s", 1)).await;
    let json = store.snapshot_json(&["port"]).await.unwrap();
    assert_eq!(
        json,
        concat!(
            r#"{"revision":2,"objects":["#,
            r#"{"kind":"port","id":"a\"","revision":2,"object":{"id":"a\"","scope":"s","ip":1}},"#,
            r#"{"kind":"port","id":"b","revision":1,"object":{"id":"b","scope":"s","ip":2}}]}"#
        )
    );
    assert_eq!(
        store.snapshot_json(&["vpc"]).await.unwrap(),
        r#"{"revision":2,"objects":[]}"#
    );
}

#[test]
fn database_urls() {
    let n = |u: &str| normalize_url(u).map(|(u, b)| (u, b == Backend::Sqlite));
    assert_eq!(
        n("sqlite:///var/lib/v.db").unwrap(),
        ("sqlite:///var/lib/v.db?mode=rwc".to_owned(), true)
    );
    assert_eq!(n("sqlite:v.db").unwrap().0, "sqlite://v.db?mode=rwc");
    assert_eq!(n("/tmp/v.db").unwrap().0, "sqlite:///tmp/v.db?mode=rwc");
    assert_eq!(
        n("sqlite://v.db?mode=ro").unwrap().0,
        "sqlite://v.db?mode=ro"
    );
    assert!(!n("postgres://u@h/db").unwrap().1);
    assert!(n("mysql://h/db").is_err());
    assert!(n("sqlite://").is_err());
}
