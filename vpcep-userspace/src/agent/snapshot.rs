//! `GET /feed/snapshot`, parsed while it streams in, one object at a time, straight into a
//! [`FeedState`]: holding the whole body, or every object as a JSON value, would take several
//! times the memory of the state itself.
//!
//! Objects are parsed directly into their records. A document that does not fit its record
//! cannot be skipped in the middle of the stream, so then the snapshot is fetched once more and
//! read through JSON values, which drops just the objects that do not parse.
use std::{
    fmt,
    io::{self, BufReader, Read},
};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tokio::sync::mpsc;

use super::desired::FeedState;
use super::feed_client::{FeedError, Link};

/// Chunks of the body in flight between the HTTP task and the parser.
const IN_FLIGHT: usize = 16;

/// Fetches the snapshot: its revision and the state at that revision.
pub async fn fetch(link: &Link, base: &str) -> Result<(i64, FeedState), FeedError> {
    match fetch_with(link, base, Mode::Direct).await {
        Err(FeedError::Decode { source, .. }) if source.is_data() => {
            tracing::warn!(error = %source, "snapshot has an object that does not parse; reading it again object by object");
            fetch_with(link, base, Mode::Tolerant).await
        }
        r => r,
    }
}

/// How objects are parsed: straight into records, or through a JSON value each (slower; a
/// document that does not parse is logged and skipped).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Tolerant,
}

async fn fetch_with(link: &Link, base: &str, mode: Mode) -> Result<(i64, FeedState), FeedError> {
    let url = format!("{}/feed/snapshot", base.trim_end_matches('/'));
    let mut resp = link.request(reqwest::Method::GET, url).send().await?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        return Err(FeedError::Status { status, body });
    }
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let parser = tokio::task::spawn_blocking(move || {
        let body = Chunks {
            rx,
            cur: Default::default(),
            pos: 0,
        };
        parse(BufReader::with_capacity(64 * 1024, body), mode)
    });
    let mut fetched = Ok(());
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                // The parser has stopped early (bad JSON): its error says why.
                if tx.send(c).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                fetched = Err(e);
                break;
            }
        }
    }
    drop(tx);
    let parsed = parser.await;
    fetched?;
    match parsed {
        Ok(r) => r.map_err(|source| FeedError::Decode {
            line: "snapshot".to_owned(),
            source,
        }),
        Err(e) => Err(FeedError::Status {
            status: 0,
            body: format!("snapshot parser stopped: {e}"),
        }),
    }
}

/// The body as a reader; the end of the channel is the end of the body.
struct Chunks<B> {
    rx: mpsc::Receiver<B>,
    cur: B,
    pos: usize,
}

impl<B: AsRef<[u8]>> Read for Chunks<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.as_ref().len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let rest = &self.cur.as_ref()[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

fn parse(r: impl Read, mode: Mode) -> Result<(i64, FeedState), serde_json::Error> {
    let mut state = FeedState::new();
    let mut de = serde_json::Deserializer::from_reader(r);
    let revision = Snapshot(&mut state, mode).deserialize(&mut de)?;
    de.end()?;
    Ok((revision, state))
}

/// `{"revision": R, "objects": [...]}` in any key order; returns R.
struct Snapshot<'a>(&'a mut FeedState, Mode);

impl<'de> DeserializeSeed<'de> for Snapshot<'_> {
    type Value = i64;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Snapshot<'_> {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a feed snapshot")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<i64, A::Error> {
        let mut revision = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "revision" => revision = Some(map.next_value::<i64>()?),
                "objects" => map.next_value_seed(Objects(&mut *self.0, self.1))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        revision.ok_or_else(|| de::Error::missing_field("revision"))
    }
}

/// The object list: each one is stored as soon as it is read.
struct Objects<'a>(&'a mut FeedState, Mode);

impl<'de> DeserializeSeed<'de> for Objects<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Objects<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Item(&mut *self.0, self.1))?.is_some() {}
        Ok(())
    }
}

/// One `{"kind", "id", "revision", "object"}`. The control plane writes `kind` and `id`
/// before `object`, so the object can go straight into its record; in any other order (or in
/// tolerant mode) it is read as a JSON value first.
struct Item<'a>(&'a mut FeedState, Mode);

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a snapshot object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (mut kind, mut id, mut value) = (None::<String>, None::<String>, None::<Value>);
        let mut stored = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "kind" => kind = Some(map.next_value()?),
                "id" => id = Some(map.next_value()?),
                "object" => match (&kind, &id) {
                    (Some(k), Some(i)) if self.1 == Mode::Direct => {
                        map.next_value_seed(Record(&mut *self.0, k, i))?;
                        stored = true;
                    }
                    _ => value = Some(map.next_value()?),
                },
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let (Some(kind), Some(id)) = (kind, id) else {
            return Err(de::Error::missing_field("kind"));
        };
        match value {
            Some(v) => self.0.apply(&kind, &id, "put", v),
            None if !stored => return Err(de::Error::missing_field("object")),
            None => {}
        }
        Ok(())
    }
}

/// An object parsed into the record of its kind.
struct Record<'a>(&'a mut FeedState, &'a str, &'a str);

impl<'de> DeserializeSeed<'de> for Record<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.put_from(self.1, self.2, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"objects":[
        {"id":"va","kind":"vpc","object":{"id":"va","vni":7},"revision":1},
        {"object":{"id":"vc","vni":9},"kind":"vpc","id":"vc","revision":1},
        {"id":"vb","kind":"vpc","object":{"id":"vb","vni":"not a number"},"revision":2},
        {"id":"x","kind":"future_kind","object":{"a":[1,2]},"revision":3}
    ],"revision":42,"extra":{"k":1}}"#;

    #[test]
    fn direct_then_tolerant() {
        // Directly: a document that does not fit its record is a data error (→ read again).
        let e = parse(BODY, Mode::Direct).err().unwrap();
        assert!(e.is_data(), "{e}");
        let (rev, st) = parse(BODY, Mode::Tolerant).unwrap();
        assert_eq!((rev, st.len()), (42, 2));
        let good = String::from_utf8(BODY.to_vec())
            .unwrap()
            .replace(r#""not a number""#, "8");
        let (rev, st) = parse(good.as_bytes(), Mode::Direct).unwrap();
        assert_eq!(
            (rev, st.len()),
            (42, 3),
            "any key order; unknown kinds ignored"
        );
        assert!(parse(&br#"{"objects":[]}"#[..], Mode::Direct).is_err());
        let cut = br#"{"revision":1,"objects":[{"id":"a"#;
        assert!(!parse(&cut[..], Mode::Direct).err().unwrap().is_data());
    }
}
