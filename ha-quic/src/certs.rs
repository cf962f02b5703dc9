//! The cluster's certificates: a private CA, and node and client
//! certificates it signs.
//!
//! Owns: creating them (with rcgen) into a directory, and loading them back.
//! Files in the directory:
//!
//! ```text
//! ca.pem, ca.key               the cluster CA (keep ca.key offline in production)
//! node-<id>.pem, node-<id>.key one per node; names DNS "node-<id>"
//! client.pem, client.key       a client certificate; names DNS "client"
//! ```
//!
//! Invariants:
//! 1. A node certificate names exactly one node identity, `node-<id>`, which
//!    is how peers prove who they are (see [`node_server_name`]).
//! 2. Creating is idempotent: existing files are kept, missing ones are
//!    issued by the existing CA.
//! 3. Private keys are written with mode 0600.

use std::path::{Path, PathBuf};

use ha_core::types::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The DNS name a node's certificate carries, and the name a peer dials it by.
pub fn node_server_name(id: NodeId) -> String {
    format!("node-{}", id.0)
}

/// What can go wrong with certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("certificate file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("certificate file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating a key or certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A loaded identity: the CA to trust, and our own chain and key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The cluster CA certificate (the only trust anchor).
    pub ca: CertificateDer<'static>,
    /// Our certificate.
    pub cert: CertificateDer<'static>,
    /// Our private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> TlsIdentity {
        TlsIdentity {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// A stable id of the cluster: derived from its CA certificate, so data
    /// directories can refuse another cluster's data.
    pub fn cluster_id(&self) -> String {
        cluster_id_of(&self.ca)
    }
}

/// The cluster id of a CA certificate.
pub fn cluster_id_of(ca: &CertificateDer<'_>) -> String {
    let a = crc32c::crc32c(ca.as_ref());
    let b = crc32c::crc32c_append(0x9E37_79B9, ca.as_ref());
    format!("{a:08x}{b:08x}")
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name
        .push(DnType::CommonName, "ha cluster CA");
    p
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn read_text(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates, in `dir`, a cluster CA (unless one exists), a certificate for
/// every node in `nodes` and a client certificate (unless they exist).
/// Returns the paths it wrote.
pub fn create_cluster_certs(dir: &Path, nodes: &[NodeId]) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_key_pair = if ca_pem.exists() && ca_key.exists() {
        KeyPair::from_pem(&read_text(&ca_key)?).map_err(|e| CertError::Invalid {
            path: ca_key.clone(),
            reason: e.to_string(),
        })?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_file(&ca_key, &key.serialize_pem(), true)?;
        write_file(&ca_pem, &cert.pem(), false)?;
        written.extend([ca_pem.clone(), ca_key.clone()]);
        key
    };
    // An issuer with the CA's name and key signs exactly as the stored CA.
    let issuer = Issuer::new(ca_params(), ca_key_pair);
    let mut issue = |name: &str, sans: Vec<SanType>, eku: Vec<ExtendedKeyUsagePurpose>| {
        let (pem, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        if pem.exists() && key.exists() {
            return Ok::<(), CertError>(());
        }
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = sans;
        p.extended_key_usages = eku;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_key = KeyPair::generate()?;
        let cert = p.signed_by(&leaf_key, &issuer)?;
        write_file(&key, &leaf_key.serialize_pem(), true)?;
        write_file(&pem, &cert.pem(), false)?;
        written.extend([pem, key]);
        Ok(())
    };
    for id in nodes {
        let name = node_server_name(*id);
        let sans = vec![
            SanType::DnsName(name.clone().try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        ];
        issue(
            &name,
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
    }
    issue(
        "client",
        vec![SanType::DnsName("client".try_into()?)],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    Ok(written)
}

fn load_cert(path: &Path) -> Result<CertificateDer<'static>, CertError> {
    let text = read_text(path)?;
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|e| CertError::Invalid {
        path: path.to_path_buf(),
        reason: format!("no PEM certificate ({e})"),
    })
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let text = read_text(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| CertError::Invalid {
        path: path.to_path_buf(),
        reason: format!("no PEM private key ({e})"),
    })
}

fn load(dir: &Path, name: &str) -> Result<TlsIdentity, CertError> {
    Ok(TlsIdentity {
        ca: load_cert(&dir.join("ca.pem"))?,
        cert: load_cert(&dir.join(format!("{name}.pem")))?,
        key: load_key(&dir.join(format!("{name}.key")))?,
    })
}

/// Loads node `id`'s identity from `dir`.
pub fn load_node_identity(dir: &Path, id: NodeId) -> Result<TlsIdentity, CertError> {
    load(dir, &node_server_name(id))
}

/// Loads the client identity from `dir`.
pub fn load_client_identity(dir: &Path) -> Result<TlsIdentity, CertError> {
    load(dir, "client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_is_idempotent_and_extends_with_new_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let first = create_cluster_certs(d, &[NodeId(1), NodeId(2)]).unwrap();
        assert_eq!(first.len(), 8, "{first:?}");
        let ca_before = std::fs::read(d.join("ca.pem")).unwrap();
        let again = create_cluster_certs(d, &[NodeId(1), NodeId(2)]).unwrap();
        assert!(again.is_empty(), "nothing rewritten: {again:?}");
        let more = create_cluster_certs(d, &[NodeId(3)]).unwrap();
        assert_eq!(more.len(), 2);
        assert_eq!(
            std::fs::read(d.join("ca.pem")).unwrap(),
            ca_before,
            "CA kept"
        );
        let n3 = load_node_identity(d, NodeId(3)).unwrap();
        let n1 = load_node_identity(d, NodeId(1)).unwrap();
        assert_eq!(n1.cluster_id(), n3.cluster_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.join("node-1.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn missing_or_bad_files_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load_node_identity(tmp.path(), NodeId(1)).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        create_cluster_certs(tmp.path(), &[NodeId(1)]).unwrap();
        std::fs::write(tmp.path().join("node-1.key"), "garbage").unwrap();
        let err = load_node_identity(tmp.path(), NodeId(1)).unwrap_err();
        assert!(err.to_string().contains("node-1.key"), "{err}");
    }
}
