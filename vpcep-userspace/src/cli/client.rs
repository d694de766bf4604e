//! HTTP client of the CLI: signs requests with AK/SK exactly as the official SDK does (through
//! the same [`crate::signing`] the server verifies with), or sends a token.
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, Url};
use serde_json::Value;

use super::{CliError, CliResult, Settings};
use crate::signing::{self, DATE_FORMAT};

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `SDK-HMAC-SHA256` with an access key and secret key.
    Signed {
        ak: String,
        sk: String,
    },
    /// `X-Auth-Token`.
    Token(String),
    None,
}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    auth: Auth,
    project_id: Option<String>,
    /// Which credential and from where, named in 401/403 errors.
    credential: String,
    /// `-v`: print each request line on stderr.
    verbose: bool,
    http: reqwest::Client,
}

/// Characters kept as-is in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Encodes one path segment (ids and names come from the command line).
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

impl Client {
    pub fn new(settings: &Settings, timeout: Duration) -> CliResult<Self> {
        let auth = match (&settings.ak, &settings.sk, &settings.token) {
            (Some(ak), Some(sk), _) => Auth::Signed {
                ak: ak.clone(),
                sk: sk.clone(),
            },
            (_, _, Some(t)) => Auth::Token(t.clone()),
            _ => Auth::None,
        };
        Url::parse(&settings.url)
            .map_err(|e| CliError::Config(format!("invalid API URL {:?}: {e}", settings.url)))?;
        if settings.tls.insecure {
            eprintln!(
                "warning: --insecure: the API's certificate is not verified; the credentials \
                 can be read by anyone on the path"
            );
        }
        let http = settings
            .tls
            .builder()
            .map_err(|e| CliError::Config(crate::tls::chain(&e)))?
            .timeout(timeout)
            .build()
            .map_err(|source| CliError::Http {
                url: settings.url.clone(),
                source,
            })?;
        Ok(Self {
            base: settings.url.clone(),
            auth,
            project_id: settings.project_id.clone(),
            credential: settings.credential.clone(),
            verbose: false,
            http,
        })
    }

    /// Prints each request line and answer status on stderr (`-v`).
    #[must_use]
    pub fn verbose(mut self, on: bool) -> Self {
        self.verbose = on;
        self
    }

    /// The project of tenant paths (flag, `VPCEP_PROJECT_ID` or profile).
    pub fn project(&self) -> CliResult<&str> {
        self.project_id.as_deref().ok_or_else(|| {
            CliError::Config(
                "no project id: give --project-id, set VPCEP_PROJECT_ID or put project_id in the \
                 profile"
                    .to_owned(),
            )
        })
    }

    /// `/v1/{project}` followed by `rest`.
    pub fn v1(&self, rest: &str) -> CliResult<String> {
        Ok(format!("/v1/{}{rest}", seg(self.project()?)))
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> CliResult<Value> {
        self.call(Method::GET, path, query, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> CliResult<Value> {
        self.call(Method::POST, path, &[], Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> CliResult<Value> {
        self.call(Method::PUT, path, &[], Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> CliResult<Value> {
        self.call(Method::DELETE, path, &[], None).await
    }

    /// Sends one request; returns the JSON body (`Null` when empty) or the API's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> CliResult<Value> {
        let mut url = Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| CliError::Config(format!("invalid API URL {:?}: {e}", self.base)))?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(CliError::BadResponse)?,
            None => Vec::new(),
        };
        let req = self
            .http
            .request(method.clone(), url.clone())
            .header("Content-Type", CONTENT_TYPE)
            .header(
                "User-Agent",
                concat!("vpcep-cli/", env!("CARGO_PKG_VERSION")),
            );
        let req = self.authenticate(req, &method, &url, &body);
        let http_err = |source| CliError::Http {
            url: self.base.clone(),
            source,
        };
        if self.verbose {
            eprintln!("> {method} {url}");
        }
        let resp = req.body(body).send().await.map_err(http_err)?;
        let status = resp.status();
        if self.verbose {
            eprintln!("< {status}");
        }
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(http_err)?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(CliError::BadResponse);
        }
        let mut err = api_error(status.as_u16(), &bytes, request_id);
        if let CliError::Api {
            status: 401 | 403,
            credential,
            ..
        } = &mut err
        {
            *credential = Some(self.credential.clone());
        }
        Err(err)
    }

    /// Adds the credentials: the SDK's signature (over the headers the SDK signs) or a token.
    fn authenticate(
        &self,
        mut req: reqwest::RequestBuilder,
        method: &Method,
        url: &Url,
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::Signed { ak, sk } => {
                let date = chrono::Utc::now().format(DATE_FORMAT).to_string();
                // The Host header reqwest sends: the port only when it is not the default.
                let host = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_owned(),
                    (None, _) => String::new(),
                };
                let mut signed = vec![
                    ("content-type", CONTENT_TYPE),
                    ("host", host.as_str()),
                    ("x-sdk-date", date.as_str()),
                ];
                if let Some(p) = &self.project_id {
                    signed.push(("x-project-id", p.as_str()));
                    req = req.header("X-Project-Id", p);
                }
                let authz = signing::sign(
                    ak,
                    sk,
                    method.as_str(),
                    url.path(),
                    url.query().unwrap_or(""),
                    &signed,
                    body,
                    &date,
                );
                req.header("X-Sdk-Date", date)
                    .header("Authorization", authz)
            }
            Auth::Token(t) => req.header("X-Auth-Token", t),
            Auth::None => req,
        }
    }
}

const CONTENT_TYPE: &str = "application/json";

/// The API's error answer (its `error_code` and `error_msg`, or the HTTP status and body).
fn api_error(status: u16, bytes: &[u8], request_id: Option<String>) -> CliError {
    let parsed: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let text = |k: &str| parsed.get(k).and_then(Value::as_str).map(str::to_owned);
    CliError::Api {
        status,
        code: text("error_code").unwrap_or_else(|| format!("HTTP.{status}")),
        message: text("error_msg")
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_owned()),
        request_id,
        credential: None,
    }
}
