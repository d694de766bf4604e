//! What every request carries for the layers after authentication (audit, limits): its id,
//! the credential it authenticated with and the peer it came from.
use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, Request},
    middleware::Next,
    response::Response,
};

/// The request's id, also answered as `x-request-id` (the SDK reports it as the
/// exception's request_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The public id of the credential a request authenticated with (an AK, a token's id, a
/// certificate): never the secret. Set by authentication; absent for anonymous requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialId(pub String);

/// The outermost layer: gives the request its id.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = id.parse() {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The peer the request came from (the server inserts it for every connection).
pub fn source(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// The client certificate a TLS connection presented, verified against the operator's
/// agent CA: the node it names (its common name) and its serial (hex), which is the
/// credential id. The server inserts it for every request of such a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub node: String,
    pub serial: String,
}
