//! The agent's client of the feed: list (snapshot), watch (NDJSON stream), register the node
//! and report the applied revision, over HTTPS with the node's certificate (or HTTP, and an
//! agent token).
use serde_json::Value;

use crate::tls::chain;

pub use crate::feed::wire::{Event, Snapshot, SnapshotObject};

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The causes are spelled out: a TLS failure's reason is the innermost.
    #[error("request to the control plane failed: {}{}", chain(.0), hint(.0))]
    Http(#[from] reqwest::Error),
    /// The request failed without saying why, and a connection of our own heard the
    /// control plane's refusal (`ClientTls::refusal_cause`).
    #[error(
        "request to the control plane failed: {error}; the control plane refused this client: {cause}"
    )]
    Refused { error: String, cause: String },
    #[error("control plane answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("bad feed message {line:?}")]
    Decode {
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

fn hint(e: &reqwest::Error) -> &'static str {
    crate::tls::hint(&chain(e)).unwrap_or("")
}

/// How the agent reaches the control plane: the HTTP client (whom it trusts, the node
/// certificate it presents) and the agent token, when it uses one.
#[derive(Debug, Clone)]
pub struct Link {
    pub http: reqwest::Client,
    pub token: Option<String>,
    /// How `http` was built: to ask for the cause of a refusal the request did not give.
    pub tls: Option<crate::tls::client::ClientTls>,
}

impl Link {
    /// A request with the token, if any (a node certificate needs none).
    pub fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.token {
            Some(t) => rb.header("x-auth-token", t),
            None => rb,
        }
    }
}

#[derive(Clone)]
pub struct FeedClient {
    link: Link,
    base: String,
}

impl FeedClient {
    /// Sends `rb` to `url`; a failure that does not name a TLS cause is probed for one.
    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, FeedError> {
        match rb.send().await {
            Ok(r) => Ok(r),
            Err(e) => {
                if hint(&e).is_empty()
                    && let Some(tls) = &self.link.tls
                    && let Some(cause) = tls.refusal_cause(url).await
                {
                    return Err(FeedError::Refused {
                        error: chain(&e),
                        cause,
                    });
                }
                Err(e.into())
            }
        }
    }
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, FeedError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Err(FeedError::Status { status, body })
}

impl FeedClient {
    /// `base` is `http://host:port`; `token` the node's agent token (or the operator's).
    pub fn new(base: &str, token: &str) -> Self {
        let link = Link {
            http: reqwest::Client::new(),
            token: Some(token.to_owned()),
            tls: None,
        };
        Self::with_link(link, base)
    }

    /// A client of `base` (`http(s)://host:port`) over `link`.
    pub fn with_link(link: Link, base: &str) -> Self {
        Self {
            link,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn snapshot(&self) -> Result<Snapshot, FeedError> {
        let url = format!("{}/feed/snapshot", self.base);
        let rb = self.link.request(reqwest::Method::GET, url.clone());
        let resp = self.send(rb, &url).await?;
        Ok(check(resp).await?.json().await?)
    }

    /// Opens a watch of the changes after `after`.
    pub async fn watch(&self, after: i64) -> Result<Watch, FeedError> {
        let url = format!("{}/feed/watch?after={after}", self.base);
        let rb = self.link.request(reqwest::Method::GET, url.clone());
        let resp = self.send(rb, &url).await?;
        Ok(Watch {
            resp: check(resp).await?,
            buf: Vec::new(),
        })
    }

    /// Registers (or updates) this node; returns the node with its SNAT address.
    pub async fn register_node(&self, name: &str, underlay_ip: &str) -> Result<Value, FeedError> {
        let url = format!("{}/inventory/nodes/{name}", self.base);
        let rb = self
            .link
            .request(reqwest::Method::PUT, url.clone())
            .json(&serde_json::json!({ "underlay_ip": underlay_ip }));
        let resp = self.send(rb, &url).await?;
        Ok(check(resp).await?.json().await?)
    }

    /// Reports the revision this node has applied.
    pub async fn report_applied(&self, node: &str, revision: i64) -> Result<(), FeedError> {
        let url = format!("{}/inventory/nodes/{node}/applied-revision", self.base);
        let rb = self
            .link
            .request(reqwest::Method::PUT, url.clone())
            .json(&serde_json::json!({ "revision": revision }));
        let resp = self.send(rb, &url).await?;
        check(resp).await?;
        Ok(())
    }
}

/// An open watch stream.
pub struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event; `None` when the stream has ended (after a relist, or when the server
    /// went away: watch again from the last applied revision).
    pub async fn next(&mut self) -> Result<Option<Event>, FeedError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line).map(Some).map_err(|source| {
                    FeedError::Decode {
                        line: String::from_utf8_lossy(&line).into_owned(),
                        source,
                    }
                });
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}
