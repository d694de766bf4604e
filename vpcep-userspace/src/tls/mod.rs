//! TLS for the control plane and its clients, with rustls and its ring provider; TLS 1.2 is
//! the oldest version either side speaks.
//!
//! * `server`: the control plane's configuration, reloaded when its files change or on
//!   SIGHUP, and the accept loop that tells the API which verified client certificate (an
//!   agent's node certificate) a connection presented.
//! * `client`: the agent's and the CLI's HTTP client: the CA bundle, the node certificate.
//! * `pki`: a development CA, the server's certificate and node certificates (`vpcep pki`).
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{SupportedProtocolVersion, crypto::CryptoProvider};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

pub mod client;
pub mod pki;
pub mod server;

pub use server::{ServerTls, TlsArgs};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {} holds no PEM {expected}", path.display())]
    Missing {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} {} is not valid PEM", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the certificate {} and the key {} do not go together", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the CA bundle {} cannot verify client certificates", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("{what} {} is not an X.509 certificate", path.display())]
    Parse { what: &'static str, path: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot make the certificate")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

pub type Result<T> = std::result::Result<T, TlsError>;

/// ring, the provider every part uses (aws-lc-rs would need cmake and more for the aarch64
/// cross-build).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2; rustls speaks nothing older.
pub(crate) const VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub(crate) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file (a chain or a CA bundle); at least one.
pub fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            what,
            path: path.to_owned(),
            expected: "PRIVATE KEY",
        },
        source => TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        },
    })
}

/// What a certificate says about itself: the common name, the serial (hex) and how long it
/// is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: Option<String>,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// Reads the names and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Some(CertInfo {
        common_name,
        serial: cert.tbs_certificate.serial.to_str_radix(16),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The causes of an error, outermost first: a TLS failure's reason (an unknown issuer, an
/// expired certificate) is the innermost.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// What a TLS failure means for the one who reads the message, from the reason rustls gives.
pub fn hint(chain: &str) -> Option<&'static str> {
    const HINTS: &[(&str, &str)] = &[
        (
            "UnknownIssuer",
            " (the server's certificate is not signed by a CA this client trusts: check ca_file / --ca-file)",
        ),
        (
            "invalid peer certificate: BadSignature",
            " (the server's certificate is not signed by the CA this client trusts: check ca_file / --ca-file)",
        ),
        (
            "NotValidForName",
            " (the server's certificate does not name the host in the URL: reissue it with that --name)",
        ),
        (
            "invalid peer certificate: Expired",
            " (the server's certificate has expired)",
        ),
        (
            "CertificateExpired",
            " (the control plane refused this client's certificate: it has expired)",
        ),
        (
            "alert: UnknownCA",
            " (the control plane refused this client's certificate: not signed by its node CA)",
        ),
        (
            "alert: BadCertificate",
            " (the control plane refused this client's certificate)",
        ),
        (
            "CertificateRequired",
            " (the control plane requires a client certificate)",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| chain.contains(needle))
        .map(|(_, h)| *h)
}
