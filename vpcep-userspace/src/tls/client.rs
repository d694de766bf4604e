//! The HTTP client of the agent and the CLI: whom it trusts (a CA bundle, else the
//! system's store) and, for an agent, the node certificate it presents.
use std::path::PathBuf;

use super::{Result, TlsError, cert_info, read, read_certs};

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
