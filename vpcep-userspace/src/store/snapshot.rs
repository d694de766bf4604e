//! The feed snapshot: every object of the agents' kinds and the revision they are at, read in
//! one consistent transaction and served as one JSON document.
use sqlx::Row;

use super::{Result, Store, StoreError};

/// One object of a snapshot, its body as stored.
struct Entry {
    kind: String,
    id: String,
    revision: i64,
    body: String,
}

impl Store {
    /// A consistent snapshot of every object of the given kinds, and its revision.
    /// The feed snapshot as one JSON document, `{"revision": R, "objects": [{"kind", "id",
    /// "revision", "object"}, …]}`, with each object's stored body spliced in as it is (it
    /// was written by `serde_json`), so serving a large store costs no per-object decode and
    /// re-encode.
    ///
    /// Written here rather than serialised: `serde_json` takes a body as is only as a
    /// `RawValue`, which parses it to validate it (see `Entry::splice_into`).
    pub async fn snapshot_json(&self, kinds: &[&str]) -> Result<String> {
        let (rev, rows) = self.snapshot_rows(kinds).await?;
        let mut out =
            String::with_capacity(rows.iter().map(|r| r.body.len() + 96).sum::<usize>() + 64);
        out.push_str("{\"revision\":");
        out.push_str(&rev.to_string());
        out.push_str(",\"objects\":[");
        for (i, entry) in rows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            entry.splice_into(&mut out)?;
        }
        out.push_str("]}");
        Ok(out)
    }

    /// The revision and the objects of `kinds` at it, from one consistent read.
    async fn snapshot_rows(&self, kinds: &[&str]) -> Result<(i64, Vec<Entry>)> {
        // One snapshot for both statements.
        let mut tx = self.begin_consistent_read().await?;
        let rev: i64 = sqlx::query("SELECT revision FROM meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let rows = sqlx::query("SELECT kind, id, revision, body FROM objects ORDER BY kind, id")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kind: String = r.try_get(0)?;
            if kinds.contains(&kind.as_str()) {
                out.push(Entry {
                    kind,
                    id: r.try_get(1)?,
                    revision: r.try_get(2)?,
                    body: r.try_get(3)?,
                });
            }
        }
        Ok((rev, out))
    }
}

impl Entry {
    /// Appends `{"kind":…,"id":…,"revision":…,"object":BODY}`.
    fn splice_into(&self, out: &mut String) -> Result<()> {
        // Every body is a JSON object `serde_json` wrote; a full parse here would cost
        // a third of serving a large store, so only its framing is checked.
        let (t, b) = (self.body.trim_end(), self.body.trim_start());
        if !b.starts_with('{') || !t.ends_with('}') {
            return Err(StoreError::Corrupt {
                kind: "snapshot",
                source: serde::de::Error::custom(format!(
                    "{} {}: not a JSON object",
                    self.kind, self.id
                )),
            });
        }
        // Kinds and ids are our own ASCII names and UUIDs, but escape them anyway.
        let esc = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        out.push_str("{\"kind\":");
        out.push_str(&esc(&self.kind));
        out.push_str(",\"id\":");
        out.push_str(&esc(&self.id));
        out.push_str(",\"revision\":");
        out.push_str(&self.revision.to_string());
        out.push_str(",\"object\":");
        out.push_str(&self.body);
        out.push('}');
        Ok(())
    }
}
