//! The cluster's certificates: a private CA, and node and client
//! certificates it signs.
//!
//! Owns: creating them (with rcgen) into a directory, and loading them back.
//! Files in the directory:
//!
//! ```text
//! ca.pem, ca.key               the cluster CA (keep ca.key offline in production)
//! node-<id>.pem, node-<id>.key one per node; names DNS "node-<id>",
//!                              "localhost", IP 127.0.0.1 and ::1, and the
//!                              node's hosts (see below)
//! client.pem, client.key       a client certificate; names DNS "client"
//! ```
//!
//! A node's hosts ([`NodeHosts`], `certs --hosts ID=NAME,...`) are the DNS
//! names and IP addresses clients and operators dial it by on other
//! machines: a client checks that the node it reached carries the host it
//! dialed. Peers check `node-<id>` instead (a peer must be that node,
//! wherever it is).
//!
//! Invariants:
//! 1. A node certificate names exactly one node identity, `node-<id>`, which
//!    is how peers prove who they are (see [`node_server_name`]).
//! 2. Creating is idempotent: existing files are kept, missing ones are
//!    issued by the existing CA.
//! 3. A CA is created only when neither `ca.pem` nor `ca.key` exists. With
//!    only one of them, or with `ca.pem` but its key away (kept offline)
//!    while something needs issuing, creating is refused
//!    ([`CertError::Refused`]): a new CA would lock every existing
//!    certificate and data directory out of the cluster.
//! 4. Every file is written under a fresh, unique temporary name, created
//!    exclusively with its final mode (0600 for private keys) from the
//!    start, synced, then renamed into place, and the directory synced: a
//!    key never passes through a wider mode or another file's permissions.
//! 5. An existing private key that others than its owner may read is
//!    reported ([`CertsReport::warnings`]; logged when loaded).
//! 6. One run at a time per directory: a run holds an exclusive lock on
//!    `.certs.lock` there, and a second run meanwhile is refused, so two
//!    runs can never pair one's key with the other's certificate.
//! 7. A host asked for is in the node's certificate when creating returns:
//!    a new certificate is issued with it, and an existing one that lacks
//!    it is refused before anything is written ([`CertError::Refused`]:
//!    certificates are never replaced in place; moving the old pair away
//!    reissues it).

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
#[derive(thiserror::Error)]
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
    /// Creating would replace or bypass the cluster CA (invariant 3), or
    /// an existing certificate lacks a host asked for (invariant 7).
    #[error("{0}")]
    Refused(String),
    /// A host asked for is not a DNS name or an IP address a certificate
    /// can carry, or is for a node not being created.
    #[error("host {host:?}: {reason}")]
    BadHost {
        /// The host as given.
        host: String,
        /// What is wrong.
        reason: String,
    },
}

/// The extra hosts (DNS names or IP addresses) of each node's
/// certificate.
pub type NodeHosts = std::collections::BTreeMap<NodeId, Vec<String>>;

/// What a certificate carries for `host`: an IP address (IPv6 with or
/// without brackets), or a DNS name (letters, digits, `-` and `.`, in
/// labels of 1 to 63 bytes, at most 253 bytes; no wildcard). The names
/// that are identities (`node-<n>`, `client`) are refused: a certificate
/// naming another node's identity would pass as that node with peers.
pub fn host_san(host: &str) -> Result<SanType, CertError> {
    let bad = |reason: &str| CertError::BadHost {
        host: host.to_string(),
        reason: reason.to_string(),
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        if ip.is_unspecified() {
            return Err(bad("an unspecified address names no one"));
        }
        return Ok(SanType::IpAddress(ip));
    }
    if bare.len() != host.len() {
        return Err(bad("only an IPv6 address goes in brackets"));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(bad("an IP address ends in no dot"));
    }
    let lower = name.to_ascii_lowercase();
    if lower == "client"
        || lower
            .strip_prefix("node-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(bad(
            "names of the form node-N and client are identities, issued by `certs` itself",
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(bad(
            "not a DNS name (letters, digits and '-' in dot-separated labels of 1 to 63, \
             at most 253 in all) or an IP address",
        ));
    }
    if name.parse::<std::net::IpAddr>().is_err()
        && name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(bad("a DNS name cannot end in a numeric label"));
    }
    Ok(SanType::DnsName(
        lower
            .try_into()
            .map_err(|e: rcgen::Error| bad(&e.to_string()))?,
    ))
}

ha_core::debug_as_display!(CertError);

/// What [`create_cluster_certs_report`] did.
#[derive(Debug, Default)]
pub struct CertsReport {
    /// The files it wrote.
    pub written: Vec<PathBuf>,
    /// Things the operator should fix (one line each), such as private keys
    /// readable by group or others.
    pub warnings: Vec<String>,
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

/// Writes `path` atomically with its final mode from the start (invariant
/// 4): a fresh temporary file created exclusively next to it, synced,
/// renamed over it, and the directory synced.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CertError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{name}.{}.{}.{nanos}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

fn exists(path: &Path) -> Result<bool, CertError> {
    path.try_exists().map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A warning if the key at `path` may be read by group or others.
fn key_mode_warning(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "private key {} has mode {mode:03o}: group or others may read it; \
                 restrict it with chmod 600",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn read_text(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates, in `dir`, a cluster CA (unless one exists), a certificate for
/// every node in `nodes` and a client certificate (unless they exist).
/// Returns the paths it wrote; warnings are logged. See
/// [`create_cluster_certs_report`].
pub fn create_cluster_certs(dir: &Path, nodes: &[NodeId]) -> Result<Vec<PathBuf>, CertError> {
    let report = create_cluster_certs_report(dir, nodes)?;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    Ok(report.written)
}

/// Like [`create_cluster_certs`], returning the warnings too. Refuses
/// (invariant 3) when only one of `ca.pem` and `ca.key` exists, and when
/// `ca.key` is away while a certificate needs issuing.
pub fn create_cluster_certs_report(dir: &Path, nodes: &[NodeId]) -> Result<CertsReport, CertError> {
    create_cluster_certs_with_hosts(dir, nodes, &NodeHosts::new())
}

/// Like [`create_cluster_certs_report`], with each node's certificate
/// also naming its `hosts` (invariant 7). Every host is checked
/// ([`host_san`]), and must be for one of `nodes`, before anything is
/// written.
pub fn create_cluster_certs_with_hosts(
    dir: &Path,
    nodes: &[NodeId],
    hosts: &NodeHosts,
) -> Result<CertsReport, CertError> {
    // A host names one node: a client dialing it must reach that node.
    let mut seen: Vec<(SanType, NodeId)> = Vec::new();
    for (id, names) in hosts {
        for h in names {
            if !nodes.contains(id) {
                return Err(CertError::BadHost {
                    host: h.clone(),
                    reason: format!("node {} is not among the nodes created", id.0),
                });
            }
            let san = host_san(h)?;
            if let Some((_, other)) = seen.iter().find(|(s, o)| *s == san && o != id) {
                return Err(CertError::BadHost {
                    host: h.clone(),
                    reason: format!(
                        "given for nodes {} and {}: a host names one node",
                        other.0, id.0
                    ),
                });
            }
            seen.push((san, *id));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let _lock = lock_certs_dir(dir)?;
    let mut report = CertsReport::default();
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let missing = leaves_to_issue(dir, nodes, hosts, &mut report)?;
    let ca_key_pair = match (exists(&ca_pem)?, exists(&ca_key)?) {
        (true, true) => {
            report.warnings.extend(key_mode_warning(&ca_key));
            if missing.is_empty() {
                return Ok(report);
            }
            KeyPair::from_pem(&read_text(&ca_key)?).map_err(|e| CertError::Invalid {
                path: ca_key.clone(),
                reason: e.to_string(),
            })?
        }
        (true, false) if missing.is_empty() => return Ok(report),
        (true, false) => {
            return Err(CertError::Refused(format!(
                "{} needs issuing but the CA key {} is missing (kept offline?): bring ca.key \
                 back into {} and run again; a new CA would lock out every existing \
                 certificate and data directory",
                missing[0].1.display(),
                ca_key.display(),
                dir.display()
            )));
        }
        (false, true) => {
            return Err(CertError::Refused(format!(
                "{} exists but the CA certificate {} does not: restore ca.pem (or move \
                 ca.key away to start a new cluster); refusing to create a new CA over it",
                ca_key.display(),
                ca_pem.display()
            )));
        }
        (false, false) => {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_file(&ca_key, &key.serialize_pem(), true)?;
            write_file(&ca_pem, &cert.pem(), false)?;
            report.written.extend([ca_pem.clone(), ca_key.clone()]);
            key
        }
    };
    issue_leaves(ca_key_pair, missing, &mut report)?;
    Ok(report)
}

/// Takes `.certs.lock` in `dir`, or refuses when another run holds it.
/// `None` when the directory cannot be written at all (a mounted secret):
/// then no other run can be half-way either, and a write that is needed
/// fails with its own error.
fn lock_certs_dir(dir: &Path) -> Result<Option<ha_core::storage::VfsLock>, CertError> {
    let lock_path = dir.join(".certs.lock");
    let lock = match ha_core::storage::Vfs::try_lock(&ha_core::storage::StdFs, &lock_path) {
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.kind() == std::io::ErrorKind::ReadOnlyFilesystem =>
        {
            None
        }
        r => Some(
            r.map_err(|source| CertError::Io {
                path: lock_path.clone(),
                source,
            })?
            .ok_or_else(|| {
                CertError::Refused(format!(
                    "another run is creating certificates in {} (it holds {}); wait for it \
                 and run again",
                    dir.display(),
                    lock_path.display()
                ))
            })?,
        ),
    };
    Ok(lock)
}

/// A leaf certificate to issue: its name, the paths of its certificate
/// and key, its subject alternative names and extended key usages.
type Leaf = (
    String,
    PathBuf,
    PathBuf,
    Vec<SanType>,
    Vec<ExtendedKeyUsagePurpose>,
);

/// Every node's certificate and the client's whose certificate or key is
/// missing from `dir`; the ones present get their key's mode checked.
fn leaves_to_issue(
    dir: &Path,
    nodes: &[NodeId],
    hosts: &NodeHosts,
    report: &mut CertsReport,
) -> Result<Vec<Leaf>, CertError> {
    // What needs issuing: every leaf whose certificate or key is missing.
    let mut leaves: Vec<(String, Vec<SanType>, Vec<ExtendedKeyUsagePurpose>)> = Vec::new();
    let mut lacking: Vec<String> = Vec::new();
    for id in nodes {
        let name = node_server_name(*id);
        let mut sans = vec![
            SanType::DnsName(name.clone().try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
        ];
        let asked = hosts.get(id).map(Vec::as_slice).unwrap_or_default();
        for h in asked {
            let san = host_san(h)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        // An existing certificate must already carry every host asked for
        // (invariant 7).
        let pem = dir.join(format!("{name}.pem"));
        if !asked.is_empty() && exists(&pem)? {
            let cert = load_cert(&pem)?;
            for h in asked {
                let bare = h
                    .strip_prefix('[')
                    .and_then(|b| b.strip_suffix(']'))
                    .unwrap_or(h);
                if !crate::tls::cert_names(&cert, bare.strip_suffix('.').unwrap_or(bare)) {
                    lacking.push(format!("{} does not name {h}", pem.display()));
                }
            }
        }
        let eku = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaves.push((name, sans, eku));
    }
    if !lacking.is_empty() {
        return Err(CertError::Refused(format!(
            "{}: certificates are not replaced in place; move the old certificate and key \
             away and run again to issue them with their hosts (nothing was written)",
            lacking.join("; ")
        )));
    }
    leaves.push((
        "client".into(),
        vec![SanType::DnsName("client".try_into()?)],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    ));
    let mut missing: Vec<Leaf> = Vec::new();
    for (name, sans, eku) in leaves {
        let (pem, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        if exists(&pem)? && exists(&key)? {
            report.warnings.extend(key_mode_warning(&key));
        } else {
            missing.push((name, pem, key, sans, eku));
        }
    }
    Ok(missing)
}

/// Issues every leaf in `missing`, signed by the CA's key, and writes it.
fn issue_leaves(
    ca_key_pair: KeyPair,
    missing: Vec<Leaf>,
    report: &mut CertsReport,
) -> Result<(), CertError> {
    // An issuer with the CA's name and key signs exactly as the stored CA.
    let issuer = Issuer::new(ca_params(), ca_key_pair);
    for (name, pem, key, sans, eku) in missing {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = sans;
        p.extended_key_usages = eku;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_key = KeyPair::generate()?;
        let cert = p.signed_by(&leaf_key, &issuer)?;
        write_file(&key, &leaf_key.serialize_pem(), true)?;
        write_file(&pem, &cert.pem(), false)?;
        report.written.extend([pem, key]);
    }
    Ok(())
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
    if let Some(w) = key_mode_warning(path) {
        tracing::warn!("{w}");
    }
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

    /// Two runs at once could each create a CA and pair one's key with the
    /// other's certificate: a second run meanwhile is refused, and writes
    /// nothing.
    #[test]
    fn a_second_run_at_the_same_time_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let held =
            ha_core::storage::Vfs::try_lock(&ha_core::storage::StdFs, &d.join(".certs.lock"))
                .unwrap()
                .expect("free");
        let err = create_cluster_certs(d, &[NodeId(1)]).unwrap_err();
        assert!(matches!(err, CertError::Refused(_)), "{err}");
        assert!(err.to_string().contains("another run"), "{err}");
        assert!(!d.join("ca.key").exists() && !d.join("ca.pem").exists());
        drop(held);
        create_cluster_certs(d, &[NodeId(1)]).unwrap();
        assert!(d.join("ca.key").exists() && d.join("node-1.pem").exists());
    }

    #[test]
    fn a_missing_half_of_the_ca_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        create_cluster_certs(d, &[NodeId(1), NodeId(2)]).unwrap();
        let ca_before = std::fs::read(d.join("ca.pem")).unwrap();
        let key = std::fs::read(d.join("ca.key")).unwrap();
        // The CA key kept offline: existing certificates are fine...
        std::fs::remove_file(d.join("ca.key")).unwrap();
        let again = create_cluster_certs(d, &[NodeId(1), NodeId(2)]).unwrap();
        assert!(again.is_empty(), "{again:?}");
        // ...but a new node needs the key back, not a new CA.
        let err = create_cluster_certs(d, &[NodeId(1), NodeId(3)]).unwrap_err();
        assert!(matches!(err, CertError::Refused(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("node-3.pem") && msg.contains("bring ca.key back"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1, "{msg}");
        assert!(!d.join("node-3.pem").exists() && !d.join("node-3.key").exists());
        assert!(!d.join("ca.key").exists(), "no new CA key");
        assert_eq!(std::fs::read(d.join("ca.pem")).unwrap(), ca_before);
        // The key without its certificate: refused too, whatever is asked.
        std::fs::write(d.join("ca.key"), &key).unwrap();
        std::fs::remove_file(d.join("ca.pem")).unwrap();
        let err = create_cluster_certs(d, &[NodeId(1)]).unwrap_err();
        assert!(err.to_string().contains("restore ca.pem"), "{err}");
        assert!(!d.join("ca.pem").exists());
        assert_eq!(std::fs::read(d.join("ca.key")).unwrap(), key);
        // Both back: node 3 is issued by the same CA.
        std::fs::write(d.join("ca.pem"), &ca_before).unwrap();
        create_cluster_certs(d, &[NodeId(3)]).unwrap();
        assert_eq!(
            load_node_identity(d, NodeId(3)).unwrap().cluster_id(),
            load_node_identity(d, NodeId(1)).unwrap().cluster_id()
        );
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_created_private_through_unique_temporaries() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
        create_cluster_certs(d, &[NodeId(1)]).unwrap();
        // A stale temporary, world-readable, where a shared name would be.
        for stale in ["node-2.tmp", "node-2.key.tmp"] {
            std::fs::write(d.join(stale), "stale").unwrap();
            std::fs::set_permissions(d.join(stale), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        // And a certificate without its key: the key is issued afresh.
        std::fs::remove_file(d.join("client.key")).unwrap();
        let report = create_cluster_certs_report(d, &[NodeId(1), NodeId(2)]).unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        for key in ["ca.key", "node-1.key", "node-2.key", "client.key"] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        assert_eq!(mode("node-2.pem") & 0o600, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") && n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // An existing key others may read is reported.
        std::fs::set_permissions(d.join("node-1.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let report = create_cluster_certs_report(d, &[NodeId(1)]).unwrap();
        assert!(report.written.is_empty());
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0].contains("node-1.key") && report.warnings[0].contains("644"),
            "{:?}",
            report.warnings
        );
    }

    /// `--hosts` names reach the node's certificate; a host an existing
    /// certificate lacks is refused with nothing written; bad hosts, and
    /// hosts of nodes not being created, are refused before anything is.
    #[test]
    fn hosts_are_named_in_node_certificates_or_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mut hosts = NodeHosts::new();
        hosts.insert(
            NodeId(1),
            vec![
                "db-1.example.com".into(),
                "10.0.0.5".into(),
                "[fd00::5]".into(),
            ],
        );
        create_cluster_certs_with_hosts(d, &[NodeId(1), NodeId(2)], &hosts).unwrap();
        let n1 = load_node_identity(d, NodeId(1)).unwrap();
        let n2 = load_node_identity(d, NodeId(2)).unwrap();
        for name in [
            "db-1.example.com",
            "10.0.0.5",
            "fd00::5",
            "node-1",
            "localhost",
            "::1",
        ] {
            assert!(crate::tls::cert_names(&n1.cert, name), "{name}");
        }
        for name in ["db-1.example.com", "10.0.0.5", "node-1"] {
            assert!(!crate::tls::cert_names(&n2.cert, name), "{name}");
        }
        assert!(crate::tls::cert_names(&n2.cert, "127.0.0.1"));
        // Asked again: nothing to do. A new host for node 1: refused, and
        // nothing is written, node 3's certificate included.
        let again = create_cluster_certs_with_hosts(d, &[NodeId(1)], &hosts).unwrap();
        assert!(again.written.is_empty());
        hosts.insert(NodeId(1), vec!["db-1b.example.com".into()]);
        let err = create_cluster_certs_with_hosts(d, &[NodeId(1), NodeId(3)], &hosts).unwrap_err();
        assert!(matches!(err, CertError::Refused(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("node-1.pem does not name db-1b.example.com") && msg.contains("move"),
            "{msg}"
        );
        assert!(!d.join("node-3.pem").exists());
        // Moved away, it is issued again with the new host.
        std::fs::remove_file(d.join("node-1.pem")).unwrap();
        std::fs::remove_file(d.join("node-1.key")).unwrap();
        create_cluster_certs_with_hosts(d, &[NodeId(1)], &hosts).unwrap();
        let n1 = load_node_identity(d, NodeId(1)).unwrap();
        assert!(crate::tls::cert_names(&n1.cert, "db-1b.example.com"));
        // Bad hosts.
        for bad in [
            "",
            "*.example.com",
            "10.0.0.5.",
            "node-2",
            "NODE-1",
            "client",
            "a..b",
            "-a.b",
            "a_b.c",
            "0.0.0.0",
            "[::]",
            "[db]",
            "1.2.3",
            "a b",
        ] {
            let mut h = NodeHosts::new();
            h.insert(NodeId(4), vec![bad.into()]);
            let err = create_cluster_certs_with_hosts(d, &[NodeId(4)], &h).unwrap_err();
            assert!(matches!(err, CertError::BadHost { .. }), "{bad:?}: {err}");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(host_san(&long).is_err());
        let mut h = NodeHosts::new();
        h.insert(NodeId(9), vec!["db-9.example.com".into()]);
        let err = create_cluster_certs_with_hosts(d, &[NodeId(4)], &h).unwrap_err();
        assert!(err.to_string().contains("not among the nodes"), "{err}");
        assert!(!d.join("node-4.pem").exists());
        // One host for two nodes.
        let mut h = NodeHosts::new();
        h.insert(NodeId(4), vec!["db.example.com".into()]);
        h.insert(NodeId(5), vec!["DB.example.com".into()]);
        let err = create_cluster_certs_with_hosts(d, &[NodeId(4), NodeId(5)], &h).unwrap_err();
        assert!(err.to_string().contains("names one node"), "{err}");
        assert!(!d.join("node-4.pem").exists());
        // Names that only start like an identity are names.
        assert!(host_san("node-1a.example.com").is_ok());
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
