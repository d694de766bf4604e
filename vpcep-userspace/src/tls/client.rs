//! The HTTP client of the agent and the CLI: whom it trusts (a CA bundle, else the
//! system's store) and, for an agent, the node certificate it presents.
use std::{path::PathBuf, sync::Arc, time::Duration};

use super::{Result, TlsError, cert_info, read, read_certs, read_key};

/// How a client verifies the control plane and proves who it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA bundle (PEM) the server's certificate must chain to; unset, the system's store.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM): the agent's node certificate.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (development only: anyone on the path can then read
    /// the credentials).
    pub insecure: bool,
}

impl ClientTls {
    /// A reqwest builder that verifies servers as configured (TLS 1.2 at least).
    pub fn builder(&self) -> Result<reqwest::ClientBuilder> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .https_only(false);
        if self.insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        match &self.ca_file {
            Some(ca) => {
                b = b.tls_built_in_root_certs(false);
                for c in read_certs("CA bundle", ca)? {
                    let c = reqwest::Certificate::from_der(&c).map_err(TlsError::Client)?;
                    b = b.add_root_certificate(c);
                }
            }
            None => b = b.tls_built_in_native_certs(true),
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            let mut pem = read("certificate", cert)?;
            pem.push(b'\n');
            pem.extend(read("key", key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(TlsError::Client)?;
            b = b.identity(id);
        }
        Ok(b)
    }

    /// Why the server at `url` refuses this client, when it says so only after the
    /// handshake. With TLS 1.3 a server checks the client's certificate once the client has
    /// finished its side; its alert (expired, unknown CA) may reach the HTTP client after
    /// that gave the connection up, and the request then fails without its cause. This
    /// opens one connection of its own and reads the answer; None when it sees no refusal
    /// (or has no CA bundle to trust the server by).
    pub async fn refusal_cause(&self, url: &str) -> Option<String> {
        let url = reqwest::Url::parse(url).ok()?;
        if url.scheme() != "https" {
            return None;
        }
        let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
        let port = url.port_or_known_default()?;
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs("CA bundle", self.ca_file.as_ref()?).ok()? {
            roots.add(c).ok()?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(
                    read_certs("node certificate", c).ok()?,
                    read_key("node key", k).ok()?,
                )
                .ok()?,
            _ => builder.with_no_client_auth(),
        };
        let name = rustls_pki_types::ServerName::try_from(host.clone()).ok()?;
        let probe = async {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .ok()?;
            let mut s = match tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
            {
                Ok(s) => s,
                Err(e) => return Some(super::chain(&e)),
            };
            // The refusal comes as an alert in answer to the client's first flight.
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: vpcep\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = [0u8; 1];
            match s.read(&mut buf).await {
                Err(e) => Some(super::chain(&e)),
                Ok(_) => None,
            }
        };
        let chain = tokio::time::timeout(Duration::from_secs(3), probe)
            .await
            .ok()??;
        let hint = super::hint(&chain).unwrap_or("");
        Some(format!("{chain}{hint}"))
    }

    /// Checks the client certificate before it is used: present, not expired, for `node`.
    /// The server would refuse such a certificate too; here the message is exact.
    pub fn check_node_cert(&self, node: &str, now: i64) -> Result<()> {
        let Some(cert) = &self.cert_file else {
            return Ok(());
        };
        let certs = read_certs("node certificate", cert)?;
        let info = certs
            .first()
            .and_then(|c| cert_info(c))
            .ok_or_else(|| TlsError::Parse {
                what: "node certificate",
                path: cert.clone(),
            })?;
        let path = cert.display();
        if now > info.not_after {
            return Err(TlsError::Invalid(format!(
                "node certificate {path} expired at {} (issue a new one: vpcep pki node {node})",
                when(info.not_after)
            )));
        }
        if now < info.not_before {
            return Err(TlsError::Invalid(format!(
                "node certificate {path} is not valid before {}",
                when(info.not_before)
            )));
        }
        match info.common_name.as_deref() {
            Some(cn) if cn == node => Ok(()),
            other => Err(TlsError::Invalid(format!(
                "node certificate {path} is for node {:?}, not {node:?}: the control plane \
                 takes the node from the certificate",
                other.unwrap_or("")
            ))),
        }
    }
}

fn when(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(
        || t.to_string(),
        |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}
