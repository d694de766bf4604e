//! Authentication: the SDK's AK/SK `SDK-HMAC-SHA256` signature, `X-Auth-Token` tokens for
//! tenants and the operator, and per-node agent tokens.
use std::{collections::HashMap, path::Path};

use axum::{
    body::Body,
    extract::{Request, State},
    http::HeaderMap,
    middleware::Next,
    response::{IntoResponse, Response},
};
use chrono::{NaiveDateTime, Utc};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::{
    AppState,
    context::{ClientCert, CredentialId},
    error::ApiError,
    hashed::HashedToken,
    limits,
};
use crate::{
    domain::Error,
    signing::{Canonical, DATE_FORMAT, SignedAuth, body_hash, parse_authorization},
};
pub use crate::{
    domain::{Caller, Identity},
    signing::{canonical_query, canonical_uri, sign},
};

/// The credentials file (TOML).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    /// Tokens with operator scope: inventory, every project, the feed.
    #[serde(default)]
    pub operator_tokens: Vec<String>,
    /// AK/SK pairs for tenants.
    #[serde(default)]
    pub credentials: Vec<AkSk>,
    /// `X-Auth-Token` tokens for tenants.
    #[serde(default)]
    pub tokens: Vec<TenantToken>,
    /// Per-node agent tokens.
    #[serde(default)]
    pub agents: Vec<AgentToken>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AkSk {
    pub ak: String,
    pub sk: String,
    pub project_id: String,
    /// Defaults to the project id.
    pub domain_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantToken {
    pub token: String,
    pub project_id: String,
    pub domain_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToken {
    pub node: String,
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid credentials file {path}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid credentials file {path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: String,
        reason: &'static str,
    },
    #[error(
        "credentials file {path} is open to other users (mode {mode:04o}): it holds secrets; \
         chmod 600 it (or 640 with the service's group)"
    )]
    Permissions { path: String, mode: u32 },
}

impl CredentialsFile {
    /// Reads the file, refusing one that other users may read or write: SKs are in clear.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = || path.display().to_string();
        let read = |source| CredentialsError::Read {
            path: shown(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 {
            return Err(CredentialsError::Permissions {
                path: shown(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let file: Self = toml::from_str(&text).map_err(|source| CredentialsError::Parse {
            path: shown(),
            source,
        })?;
        file.check_hashes()
            .map_err(|(field, reason)| CredentialsError::Invalid {
                path: shown(),
                field,
                reason,
            })?;
        Ok(file)
    }

    /// Every `sha256:` token is a well-formed hash (else it would never match, silently).
    fn check_hashes(&self) -> Result<(), (String, &'static str)> {
        let stored = self
            .operator_tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("operator_tokens[{i}]"), t))
            .chain(
                self.tokens
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("tokens[{i}].token"), &t.token)),
            )
            .chain(
                self.agents
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("agents[{i}].token"), &t.token)),
            );
        for (field, t) in stored {
            if let Some(Err(reason)) = HashedToken::parse(t) {
                return Err((field, reason));
            }
        }
        Ok(())
    }
}

/// Lookup tables built from the credentials file.
#[derive(Debug, Default)]
pub struct Credentials {
    aksk: HashMap<String, AkSk>,
    tokens: HashMap<String, Identity>,
    /// Tokens stored hashed: each is checked in turn (there are few, and SHA-256 is fast).
    hashed: Vec<(HashedToken, Identity)>,
    domains: HashMap<String, String>,
}

impl Credentials {
    pub fn new(file: CredentialsFile) -> Self {
        let mut c = Self::default();
        for t in file.operator_tokens {
            c.add_token(t, Identity::Operator);
        }
        for a in file.agents {
            c.add_token(a.token, Identity::Agent { node: a.node });
        }
        for t in file.tokens {
            let domain = t.domain_id.unwrap_or_else(|| t.project_id.clone());
            c.domains.insert(t.project_id.clone(), domain.clone());
            c.add_token(
                t.token,
                Identity::Tenant {
                    project_id: t.project_id,
                    domain_id: domain,
                },
            );
        }
        for k in file.credentials {
            let domain = k.domain_id.clone().unwrap_or_else(|| k.project_id.clone());
            c.domains.insert(k.project_id.clone(), domain);
            c.aksk.insert(k.ak.clone(), k);
        }
        c
    }

    fn add_token(&mut self, stored: String, id: Identity) {
        match HashedToken::parse(&stored) {
            None => {
                self.tokens.insert(stored, id);
            }
            Some(Ok(h)) => self.hashed.push((h, id)),
            // `CredentialsFile::load` refuses these; one built in code is skipped, never
            // taken as a token in clear.
            Some(Err(reason)) => tracing::error!(reason, "malformed hashed token ignored"),
        }
    }

    /// The identity a presented token stands for.
    pub fn token(&self, token: &str) -> Option<Identity> {
        if let Some(id) = self.tokens.get(token) {
            return Some(id.clone());
        }
        self.hashed
            .iter()
            .find(|(h, _)| h.matches(token))
            .map(|(_, id)| id.clone())
    }

    /// The domain of a project: configured, or the project id itself.
    pub fn domain_of(&self, project: &str) -> String {
        self.domains
            .get(project)
            .cloned()
            .unwrap_or_else(|| project.to_owned())
    }
}

/// Largest accepted clock difference between the client's `X-Sdk-Date` and ours.
const MAX_SKEW_SECS: i64 = 15 * 60;

/// Verifies an SDK-HMAC-SHA256 request; returns the AK's entry.
#[allow(clippy::too_many_arguments)] // one argument per part of the canonical request
fn verify_signature<'c>(
    creds: &'c Credentials,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    auth: &SignedAuth<'_>,
    now: NaiveDateTime,
) -> Result<&'c AkSk, Error> {
    let key = creds
        .aksk
        .get(auth.access)
        .ok_or_else(|| bad("unknown access key"))?;
    let date = headers
        .get("x-sdk-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad("X-Sdk-Date header is required"))?;
    let t = NaiveDateTime::parse_from_str(date, DATE_FORMAT)
        .map_err(|_| bad("X-Sdk-Date is not YYYYMMDDTHHMMSSZ"))?;
    if (now - t).num_seconds().abs() > MAX_SKEW_SECS {
        return Err(bad("X-Sdk-Date is too far from the server's clock"));
    }
    if !auth.signed_headers.contains(&"x-sdk-date") {
        return Err(bad("X-Sdk-Date must be signed"));
    }
    let canonical = Canonical {
        method,
        raw_path,
        raw_query,
        headers: &canonical_headers(headers, &auth.signed_headers)?,
        signed_headers: &auth.signed_headers.join(";"),
        body_hash: &signed_body_hash(headers, body)?,
        date,
    };
    let sig = hex::decode(auth.signature).map_err(|_| bad("signature is not hex"))?;
    if !canonical.verify(&key.sk, &sig) {
        return Err(bad("signature does not match"));
    }
    Ok(key)
}

fn bad(m: &str) -> Error {
    Error::Unauthorized(m.to_owned())
}

/// The canonical header lines of the signed headers, as the request carries them.
fn canonical_headers(headers: &HeaderMap, signed: &[&str]) -> Result<String, Error> {
    let mut out = String::new();
    for name in signed {
        let v = headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("a signed header is missing"))?;
        out.push_str(name);
        out.push(':');
        out.push_str(v.trim());
        out.push('\n');
    }
    Ok(out)
}

/// The body hash the signature covers: the body's, or `UNSIGNED-PAYLOAD` when the client
/// says so (a stated hash must match the body).
fn signed_body_hash(headers: &HeaderMap, body: &[u8]) -> Result<String, Error> {
    let actual = body_hash(body);
    if body.is_empty() {
        return Ok(actual);
    }
    match headers
        .get("x-sdk-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        Some("UNSIGNED-PAYLOAD") => Ok("UNSIGNED-PAYLOAD".to_owned()),
        Some(h) if h != actual => Err(bad("body does not match X-Sdk-Content-Sha256")),
        _ => Ok(actual),
    }
}

/// The project segment of a `/v1/{project}/…` or `/v2/{project}/…` path (still encoded).
fn path_project(path: &str) -> Option<&str> {
    let mut it = path.split('/');
    it.next()?;
    let version = it.next()?;
    if version != "v1" && version != "v2" {
        return None;
    }
    // `/v1/` is version discovery, not a project path.
    it.next().filter(|p| !p.is_empty())
}

/// Middleware: authenticates, checks the path project and records `Identity` (and `Caller`
/// for tenant paths) in the request extensions.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = match authenticate(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    tracing::debug!(
        %method,
        path,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

async fn authenticate(state: &AppState, req: Request) -> Result<Request, ApiError> {
    let path = req.uri().path().to_owned();
    // A backed-off source or key is refused before its credentials are looked at.
    let attempt = limits::Attempt::of(&req);
    state.limits.admit(&attempt)?;
    let (mut req, identity) = identify(state, req)
        .await
        .inspect_err(|e| state.limits.auth_failed(&attempt, e))?;
    state.limits.auth_succeeded(&attempt);
    if let Some(seg) = path_project(&path) {
        let project = percent_decode_str(seg).decode_utf8_lossy().into_owned();
        let caller = caller(&state.credentials, &identity, project)?;
        if let Some(h) = req.headers().get("x-project-id")
            && h.to_str().ok() != Some(caller.project_id.as_str())
        {
            return Err(Error::Forbidden(
                "X-Project-Id does not match the path project".to_owned(),
            )
            .into());
        }
        req.extensions_mut().insert(caller);
    }
    req.extensions_mut().insert(identity);
    Ok(req)
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Who sent the request: a signature, a token, or nobody. A signed request's body is read
/// (it is signed) and put back.
async fn identify(state: &AppState, req: Request) -> Result<(Request, Identity), ApiError> {
    let creds = &state.credentials;
    if let Some(authz) = header(&req, "authorization") {
        let auth = parse_authorization(&authz)
            .ok_or_else(|| bad("Authorization must be SDK-HMAC-SHA256"))?;
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, state.config.max_body)
            .await
            .map_err(|_| ApiError::TooLarge)?;
        let key = verify_signature(
            creds,
            parts.method.as_str(),
            &path,
            &query,
            &parts.headers,
            &bytes,
            &auth,
            Utc::now().naive_utc(),
        )?;
        let id = Identity::Tenant {
            project_id: key.project_id.clone(),
            domain_id: key
                .domain_id
                .clone()
                .unwrap_or_else(|| key.project_id.clone()),
        };
        let mut req = Request::from_parts(parts, Body::from(bytes));
        req.extensions_mut().insert(CredentialId(key.ak.clone()));
        Ok((req, id))
    } else if let Some(token) = header(&req, "x-auth-token").filter(|t| !t.trim().is_empty()) {
        // An empty token is no credential, not a bad one (anonymous routes answer as
        // without it); a present but empty Authorization still fails as malformed.
        let id = creds.token(&token).ok_or_else(|| bad("unknown token"))?;
        let mut req = req;
        req.extensions_mut().insert(CredentialId(token_id(&token)));
        Ok((req, id))
    } else if let Some(cert) = req.extensions().get::<ClientCert>().cloned() {
        // A node certificate the TLS layer verified against the node CA: the node is the
        // one it names, whatever the request claims.
        let mut req = req;
        req.extensions_mut()
            .insert(CredentialId(format!("cert:{}", cert.serial)));
        Ok((req, Identity::Agent { node: cert.node }))
    } else {
        Ok((req, Identity::Anonymous))
    }
}

/// A token's public id: a prefix of its SHA-256, which names it in logs and the audit
/// without revealing it.
pub fn token_id(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    format!("token:{}", hex::encode(&digest[..6]))
}

/// The tenant a project path acts for: the identity's own project, or any for the operator.
fn caller(creds: &Credentials, identity: &Identity, project: String) -> Result<Caller, Error> {
    match identity {
        Identity::Anonymous => Err(bad("credentials are required")),
        Identity::Agent { .. } => Err(Error::Forbidden(
            "agent tokens cannot use the tenant API".to_owned(),
        )),
        Identity::Tenant {
            project_id,
            domain_id,
        } => {
            if *project_id != project {
                return Err(Error::Forbidden(format!(
                    "credentials do not own project {project}"
                )));
            }
            Ok(Caller {
                project_id: project,
                domain_id: domain_id.clone(),
                operator: false,
            })
        }
        Identity::Operator => Ok(Caller {
            domain_id: creds.domain_of(&project),
            project_id: project,
            operator: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors produced by the official signer (huaweicloudsdkcore 3.1.219, `Signer.sign`).
    #[test]
    fn verifies_signatures_made_by_the_sdk() {
        let creds = Credentials::new(CredentialsFile {
            credentials: vec![AkSk {
                ak: "AK-PROVIDER".into(),
                sk: "SK-provider".into(),
                project_id: "proj-provider".into(),
                domain_id: None,
            }],
            ..Default::default()
        });
        let now = NaiveDateTime::parse_from_str("20261123T123500Z", DATE_FORMAT).unwrap();
        let check = |method: &str, query: &str, ct: &str, body: &[u8], sig: &str| {
            let mut h = HeaderMap::new();
            h.insert("content-type", ct.parse().unwrap());
            h.insert("x-project-id", "proj-provider".parse().unwrap());
            h.insert("user-agent", "huaweicloud-usdk-python/3.0".parse().unwrap());
            h.insert("x-sdk-date", "20261123T123323Z".parse().unwrap());
            h.insert("host", "127.0.0.1:8080".parse().unwrap());
            let authz = format!(
                "SDK-HMAC-SHA256 Access=AK-PROVIDER, \
                 SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, \
                 Signature={sig}"
            );
            let auth = parse_authorization(&authz).unwrap();
            verify_signature(
                &creds,
                method,
                "/v1/proj-provider/vpc-endpoint-services",
                query,
                &h,
                body,
                &auth,
                now,
            )
            .map(|k| k.project_id.clone())
        };
        let body = br#"{"port_id": "p", "vpc_id": "v", "approval_enabled": true, "server_type": "VM", "ports": [{"client_port": 1, "server_port": 2, "protocol": "TCP"}]}"#;
        let post_sig = "5c81a4f156b78151ef3d1b4f116e06f6fde25517b3d91543976eebac8e1536cc";
        assert_eq!(
            check("POST", "", "application/json;charset=utf-8", body, post_sig).unwrap(),
            "proj-provider"
        );
        let get_sig = "8462f3059f4b90da9dfc02d74e139b14ae052a931af4b3f41f393dbc0bd0ce8e";
        let q = "endpoint_service_name=a%20b%2Cc~&limit=10&offset=0";
        assert!(check("GET", q, "application/json", b"", get_sig).is_ok());
        // Any change breaks it: body, query, method.
        assert!(
            check(
                "POST",
                "",
                "application/json;charset=utf-8",
                b"{}",
                post_sig
            )
            .is_err()
        );
        assert!(check("GET", "limit=11&offset=0", "application/json", b"", get_sig).is_err());
        assert!(check("PUT", "", "application/json;charset=utf-8", body, post_sig).is_err());
    }
}
