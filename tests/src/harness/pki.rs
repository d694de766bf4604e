//! A throwaway PKI per test: a CA, the control plane's certificate (localhost, 127.0.0.1)
//! and node certificates, written as PEM files the way `vpcep pki` writes them.
use std::path::PathBuf;

use time::{Duration, OffsetDateTime};
use vpcep::tls::{
    client::ClientTls,
    pki::{Ca, Issued, Kind, validity},
    server::TlsFiles,
};

use super::TempDir;

pub struct Pki {
    pub ca: Ca,
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = TempDir::new("pki");
        let ca = Ca::generate(&format!("test CA {}", uuid::Uuid::new_v4()), 30).unwrap();
        ca.save(&dir.0).unwrap();
        let pki = Self { ca, dir };
        pki.issue_server("server");
        pki
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// Issues (again) the server certificate into `<stem>.pem`/`<stem>-key.pem`.
    pub fn issue_server(&self, stem: &str) -> Issued {
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let issued = self
            .ca
            .issue(Kind::Server, "test server", &names, validity(30))
            .unwrap();
        issued.save(&self.dir.0, stem).unwrap();
        issued
    }

    /// The server's files, with the node CA for mutual TLS.
    pub fn server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.0.join("server.pem"),
            key: self.dir.0.join("server-key.pem"),
            client_ca: Some(self.ca_file()),
        }
    }

    /// A node certificate valid now, or one that expired yesterday.
    pub fn node(&self, name: &str, expired: bool) -> ClientTls {
        let valid = if expired {
            let now = OffsetDateTime::now_utc();
            (now - Duration::days(30), now - Duration::days(1))
        } else {
            validity(30)
        };
        let stem = format!("node-{name}{}", if expired { "-expired" } else { "" });
        self.ca
            .issue(Kind::Node, name, &[], valid)
            .unwrap()
            .save(&self.dir.0, &stem)
            .unwrap();
        ClientTls {
            ca_file: Some(self.ca_file()),
            cert_file: Some(self.dir.0.join(format!("{stem}.pem"))),
            key_file: Some(self.dir.0.join(format!("{stem}-key.pem"))),
            insecure: false,
        }
    }

    /// A client that trusts this CA and presents no certificate.
    pub fn client(&self) -> ClientTls {
        ClientTls {
            ca_file: Some(self.ca_file()),
            ..ClientTls::default()
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
