//! A development PKI (`vpcep pki`): one CA that signs the control plane's server
//! certificate and the agents' node certificates (common name = node name, client-auth
//! only). Production deployments may use their own CA instead; the control plane only
//! needs the PEM files.
use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::{Result, TlsError, read};

/// `vpcep pki` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PkiCmd {
    /// Create a CA (if DIR has none) and a server certificate signed by it.
    Init {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Issue (again) the control plane's server certificate: DIR/server.pem, server-key.pem.
    Server {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Issue a node certificate for an agent: DIR/node-NAME.pem and node-NAME-key.pem.
    Node {
        /// The node's name, as the agent's `node_name` and the inventory give it.
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days it is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Where the CA and the certificates live (created if missing).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// DNS names or IP addresses clients reach the control plane by (repeatable; localhost,
    /// 127.0.0.1 and ::1 are always in).
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// Days the server certificate is valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
}

/// Runs a `vpcep pki` command; prints the files it wrote.
pub fn run(cmd: &PkiCmd) -> Result<()> {
    let written = match cmd {
        PkiCmd::Init { server } => {
            let mut w = Vec::new();
            if !server.dir.join(CA_CERT).exists() {
                w.extend(Ca::generate("vpcep development CA", 3650)?.save(&server.dir)?);
            }
            w.extend(issue_server(server)?);
            w
        }
        PkiCmd::Server { server } => issue_server(server)?,
        PkiCmd::Node { name, dir, days } => {
            let ca = Ca::load(dir)?;
            let issued = ca.issue(Kind::Node, name, &[], validity(*days))?;
            issued.save(dir, &format!("node-{name}"))?
        }
    };
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

fn issue_server(a: &ServerArgs) -> Result<Vec<PathBuf>> {
    let ca = Ca::load(&a.dir)?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(a.names.iter().cloned());
    let issued = ca.issue(
        Kind::Server,
        "vpcep control plane",
        &names,
        validity(a.days),
    )?;
    issued.save(&a.dir, "server")
}

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// From an hour ago (clocks differ a little) for `days`.
pub fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::hours(1),
        now + Duration::days(i64::from(days)),
    )
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The control plane: server auth, the names as subject alternative names.
    Server,
    /// An agent: client auth, the node name as common name.
    Node,
}

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<stem>.pem` (0644) and `<stem>-key.pem` (0600).
    pub fn save(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        write(&key, &self.key_pem, 0o600)?;
        write(&cert, &self.cert_pem, 0o644)?;
        Ok(vec![cert, key])
    }
}

/// Writes a file whole with `mode`, through a temporary file renamed into place, so that a
/// server watching it never reads half of it.
fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A CA: its certificate and key.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn serial() -> SerialNumber {
    // 16 random bytes, the top bit clear so the DER integer stays positive.
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "vpcep");
    dn.push(DnType::CommonName, cn);
    dn
}

impl Ca {
    /// A new self-signed CA valid for `days`.
    pub fn generate(common_name: &str, days: u32) -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = name(common_name);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (p.not_before, p.not_after) = validity(days);
        p.serial_number = Some(serial());
        let cert = p.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The CA of `dir` (`ca.pem`, `ca-key.pem`).
    pub fn load(dir: &Path) -> Result<Self> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let text = |what, p: &Path| -> Result<String> {
            String::from_utf8(read(what, p)?)
                .map_err(|_| TlsError::Invalid(format!("{what} {} is not PEM text", p.display())))
        };
        let cert_pem = text("CA certificate", &cert_path)?;
        let key = KeyPair::from_pem(&text("CA key", &key_path)?).map_err(|e| {
            TlsError::Invalid(format!("CA key {} cannot be read: {e}", key_path.display()))
        })?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| {
            TlsError::Invalid(format!(
                "CA certificate {} cannot be read: {e}",
                cert_path.display()
            ))
        })?;
        // Signing needs the CA as an rcgen certificate: the same name and key give the same
        // issuer to the certificates it signs.
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// Writes `ca.pem` and `ca-key.pem` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        Issued {
            cert_pem: self.cert.pem(),
            key_pem: self.key.serialize_pem(),
        }
        .save(dir, "ca")
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a certificate valid from `valid.0` to `valid.1` (tests issue expired ones).
    pub fn issue(
        &self,
        kind: Kind,
        common_name: &str,
        names: &[String],
        valid: (OffsetDateTime, OffsetDateTime),
    ) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = name(common_name);
        for n in names {
            p.subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.clone().try_into()?),
                });
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![match kind {
            Kind::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Kind::Node => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        p.use_authority_key_identifier_extension = true;
        (p.not_before, p.not_after) = valid;
        p.serial_number = Some(serial());
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
