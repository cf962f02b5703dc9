//! A node's data directory: who owns it, and who may use it now.
//!
//! Owns: the directory's lock, its identity file and its stored bootstrap
//! configuration. Layout:
//!
//! ```text
//! DIR/LOCK     held (flock) by the one process using the directory
//! DIR/meta     which cluster and node the data belongs to
//! DIR/cluster  the voters (ids and addresses) the cluster started with
//! DIR/wal/     write-ahead log segments
//! DIR/snap/    snapshot files
//! ```
//!
//! Invariants:
//! 1. At most one process uses a directory at a time: a second one fails at
//!    once with [`DataDirError::Locked`].
//! 2. A directory holds the data of exactly one (cluster, node); opening it
//!    for another is refused before anything in it is touched.
//! 3. `meta` is written once, atomically (temporary file, sync, rename,
//!    directory sync), before any log or snapshot exists, and only after
//!    `wal/` exists durably. So a directory with `meta` but without `wal/`
//!    lost its log (and with it the node's term and vote): opening it is
//!    refused with [`DataDirError::MissingWal`], never started afresh.
//! 4. `cluster` is written once, atomically like `meta`, when the node
//!    first starts ([`DataDir::bootstrap_or_check_membership`]); afterwards
//!    a different voter set is refused with
//!    [`DataDirError::MembershipMismatch`]. It records the bootstrap
//!    configuration only: once membership changes exist, the log and
//!    snapshots carry the current one.
//! 5. Every file read here is bounded in size and fully validated (header,
//!    checksum, every field) before anything in it is used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::vfs::{Vfs, VfsLock};
use crate::types::NodeId;

const META_FILE: &str = "meta";

/// Proof that a data directory was checked against a replicated type's
/// stored fingerprint ([`DataDir::check_schema`]): what
/// [`start_checked_node`](crate::node::start_checked_node) asks for before it
/// replays a log into that type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaChecked {
    stored: u64,
    wal_dir: PathBuf,
}

impl SchemaChecked {
    /// The stored fingerprint the directory was checked against.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// Where the checked directory keeps its log: the only log a node
    /// started with this proof may replay.
    pub fn wal_dir(&self) -> &Path {
        &self.wal_dir
    }
}

/// Whether `root` is a data directory some node already initialized (it
/// holds its identity file); false for a missing or empty directory.
pub fn initialized<V: Vfs>(vfs: &V, root: &Path) -> bool {
    vfs.list(root)
        .is_ok_and(|names| names.iter().any(|n| n == META_FILE))
}
const META_TMP: &str = "meta.tmp";
const LOCK_FILE: &str = "LOCK";
const META_HEADER: &str = "ha data directory, format 1";
const WAL_DIR: &str = "wal";
const CLUSTER_FILE: &str = "cluster";
const CLUSTER_TMP: &str = "cluster.tmp";
const CLUSTER_HEADER: &str = "ha cluster configuration, format 1";
/// Largest identity or configuration file read (a bound on a damaged one).
const MAX_SMALL_FILE_BYTES: u64 = 1 << 20;

/// What can go wrong opening a data directory.
#[derive(thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the directory.
    #[error(
        "data directory {0} is in use by another process (its lock {0}/LOCK is held); \
         stop that process or choose another data directory"
    )]
    Locked(PathBuf),
    /// The directory belongs to another cluster.
    #[error(
        "data directory {dir} belongs to cluster {found:?}, not {expected:?}; \
         choose another data directory or the matching cluster"
    )]
    ClusterMismatch {
        /// The directory.
        dir: PathBuf,
        /// The cluster it belongs to.
        found: String,
        /// The cluster asked for.
        expected: String,
    },
    /// The directory belongs to another node of the cluster.
    #[error("data directory {dir} belongs to node {found}, not node {expected}")]
    NodeMismatch {
        /// The directory.
        dir: PathBuf,
        /// The node it belongs to.
        found: NodeId,
        /// The node asked for.
        expected: NodeId,
    },
    /// The data was written by another version of the replicated type.
    #[error(
        "data directory {dir} holds data of replicated-type schema {found:016x}, but this build \
         has schema {expected:016x}: the commands in its log would be misread. The stored shape \
         differs: the replicated type changed (or the version of ha, whose own stored formats \
         the fingerprint covers too; `ha_core::schema::Schema::of` shows the shape). Run the \
         build that wrote it, or follow \"Writing and evolving a replicated type\" in the \
         README"
    )]
    SchemaMismatch {
        /// The directory.
        dir: PathBuf,
        /// The schema it holds.
        found: u64,
        /// The schema of this build.
        expected: u64,
    },
    /// The directory holds raw data (it was created by [`DataDir::open`],
    /// schema 0) and a node of a replicated type was asked to use it.
    #[error(
        "data directory {dir} was created for raw, untyped data (by DataDir::open, which records \
         no schema), so a node of a replicated type (schema {expected:016x}) cannot read its \
         log: nothing says its commands are this type's. Use a new data directory for the \
         typed node (open it with DataDir::open_for::<YourType>()); if this one never held \
         data, it can simply be removed"
    )]
    NoSchema {
        /// The directory.
        dir: PathBuf,
        /// The schema of the replicated type.
        expected: u64,
    },
    /// The directory holds data of a replicated type and was opened as raw
    /// (schema 0) data.
    #[error(
        "data directory {dir} holds data of a replicated type (schema {found:016x}) and was \
         opened for raw data (DataDir::open): open it with DataDir::open_for::<YourType>() of \
         the type that wrote it"
    )]
    TypedOpenedRaw {
        /// The directory.
        dir: PathBuf,
        /// The schema it holds.
        found: u64,
    },
    /// The replicated type's wire shape cannot be traced, so no fingerprint
    /// can be checked (see [`crate::schema`]).
    #[error(transparent)]
    Untraceable(#[from] crate::schema::SchemaError),
    /// The identity file is damaged or missing while data exists.
    #[error("data directory {dir}: {reason}")]
    BadMeta {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory is initialized (its identity file exists) but its
    /// write-ahead log directory is gone: starting would forget the node's
    /// term and vote.
    #[error(
        "data directory {dir} has an identity file but its write-ahead log directory {wal} is \
         missing: starting would forget this node's term and vote, refusing to start; restore \
         {wal} from a backup (a node that lost its log must not rejoin under the same id)"
    )]
    MissingWal {
        /// The directory.
        dir: PathBuf,
        /// The missing log directory.
        wal: PathBuf,
    },
    /// The stored configuration file is damaged.
    #[error("data directory {dir}: cluster configuration {file}: {reason}")]
    BadCluster {
        /// The directory.
        dir: PathBuf,
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The voters asked for differ from the ones the cluster started with.
    #[error(
        "data directory {dir} belongs to a cluster started with voters {stored}, not {given}; \
         a restart must use the stored configuration"
    )]
    MembershipMismatch {
        /// The directory.
        dir: PathBuf,
        /// The stored voters, `ID=HOST:PORT,...`.
        stored: String,
        /// The voters asked for, `ID=HOST:PORT,...`.
        given: String,
    },
    /// A file operation failed.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

crate::debug_as_display!(DataDirError);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open, locked data directory (see the module docs).
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    cluster_id: String,
    node: NodeId,
    /// The schema fingerprint recorded in the identity file (0: raw data).
    schema: u64,
    _lock: VfsLock,
}

/// Checks the last line's checksum over the lines before it; returns them.
fn checked_body(text: &str, what: &str) -> Result<String, String> {
    let (body, crc_line) = text
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .ok_or_else(|| format!("{what} is truncated"))?;
    let crc = crc_line
        .strip_prefix("crc32c=")
        .ok_or_else(|| format!("{what} has no checksum"))?;
    let body = format!("{body}\n");
    if u32::from_str_radix(crc, 16).ok() != Some(crc32c::crc32c(body.as_bytes())) {
        return Err(format!("{what} checksum mismatch"));
    }
    Ok(body)
}

/// Reads a small file whole, refusing one larger than any we write.
fn read_small<V: Vfs>(vfs: &V, path: &Path) -> Result<String, DataDirError> {
    let size = vfs.file_size(path).map_err(io_err(path))?;
    if size > MAX_SMALL_FILE_BYTES {
        return Err(DataDirError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{size} bytes, larger than any file written there"),
            ),
        });
    }
    let bytes = vfs.read(path).map_err(io_err(path))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes `root/name` atomically: `root/tmp`, sync, rename, directory sync.
fn write_atomically<V: Vfs>(
    vfs: &V,
    root: &Path,
    name: &str,
    tmp: &str,
    text: &str,
) -> Result<(), DataDirError> {
    super::vfs::replace_durably(vfs, root, name, tmp, text.as_bytes())
        .map_err(|(path, e)| io_err(&path)(e))
}

fn render_meta(cluster_id: &str, node: NodeId, schema: u64) -> String {
    let body = format!(
        "{META_HEADER}\ncluster_id={cluster_id}\nnode_id={}\nschema={schema:016x}\n",
        node.0
    );
    format!("{body}crc32c={:08x}\n", crc32c::crc32c(body.as_bytes()))
}

fn parse_meta(text: &str) -> Result<(String, NodeId, u64), String> {
    let body = checked_body(text, "identity file")?;
    let mut lines = body.lines();
    if lines.next() != Some(META_HEADER) {
        return Err("identity file has an unknown format".into());
    }
    let cluster = lines
        .next()
        .and_then(|l| l.strip_prefix("cluster_id="))
        .ok_or("identity file has no cluster id")?;
    let node = lines
        .next()
        .and_then(|l| l.strip_prefix("node_id="))
        .and_then(|n| n.parse().ok())
        .ok_or("identity file has no node id")?;
    let schema = lines
        .next()
        .and_then(|l| l.strip_prefix("schema="))
        .and_then(|n| u64::from_str_radix(n, 16).ok())
        .ok_or("identity file has no schema fingerprint")?;
    Ok((cluster.to_string(), NodeId(node), schema))
}

impl DataDir {
    /// Opens (creating if new) and locks the data directory of `node` in
    /// cluster `cluster_id`, for raw (schema-less) data.
    pub fn open<V: Vfs>(
        vfs: &V,
        root: &Path,
        cluster_id: &str,
        node: NodeId,
    ) -> Result<DataDir, DataDirError> {
        DataDir::open_with_schema(vfs, root, cluster_id, node, 0)
    }

    /// Opens (creating if new) and locks the data directory of `node` in
    /// cluster `cluster_id` for a node of replicated type `T`: a directory
    /// written by another version of `T` (or by another type, or raw data) is
    /// refused with [`DataDirError::SchemaMismatch`] or
    /// [`DataDirError::NoSchema`].
    pub fn open_for<T: crate::sm::Replicated, V: Vfs>(
        vfs: &V,
        root: &Path,
        cluster_id: &str,
        node: NodeId,
    ) -> Result<DataDir, DataDirError> {
        let schema = crate::schema::Schema::of::<T>()?.stored();
        DataDir::open_with_schema(vfs, root, cluster_id, node, schema)
    }

    /// Like [`DataDir::open`], for data of a replicated type whose schema
    /// fingerprint is `schema`: a directory of another schema is refused.
    /// [`DataDir::open_for`] is the same with the fingerprint taken from the
    /// type.
    pub fn open_with_schema<V: Vfs>(
        vfs: &V,
        root: &Path,
        cluster_id: &str,
        node: NodeId,
        schema: u64,
    ) -> Result<DataDir, DataDirError> {
        if cluster_id.is_empty() || cluster_id.contains('\n') {
            return Err(DataDirError::BadMeta {
                dir: root.to_path_buf(),
                reason: "a cluster id must be one non-empty line".into(),
            });
        }
        super::vfs::create_dir_durably(vfs, root).map_err(io_err(root))?;
        let lock = vfs
            .try_lock(&root.join(LOCK_FILE))
            .map_err(io_err(root))?
            .ok_or_else(|| DataDirError::Locked(root.to_path_buf()))?;
        let names = vfs.list(root).map_err(io_err(root))?;
        if names.iter().any(|n| n == META_FILE) {
            check_existing(vfs, root, cluster_id, node, schema)?;
        } else {
            initialize(vfs, root, cluster_id, node, schema)?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            cluster_id: cluster_id.to_string(),
            node,
            schema,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The cluster the data belongs to.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }
    /// The node the data belongs to.
    pub fn node(&self) -> NodeId {
        self.node
    }
    /// The schema fingerprint of the replicated type whose data the
    /// directory holds; 0 for raw data (opened with [`DataDir::open`]).
    pub fn schema(&self) -> u64 {
        self.schema
    }

    /// Checks that the directory holds data of replicated type `T`: opened
    /// with `T`'s schema fingerprint, so its log cannot be misread. A node of
    /// a replicated type calls this before it reads anything, and gives the
    /// answer to [`start_checked_node`](crate::node::start_checked_node).
    pub fn check_schema<T: crate::sm::Replicated>(&self) -> Result<SchemaChecked, DataDirError> {
        let expected = crate::schema::Schema::of::<T>()?.stored();
        if self.schema == expected {
            Ok(SchemaChecked {
                stored: expected,
                wal_dir: self.wal_dir(),
            })
        } else if self.schema == 0 {
            Err(DataDirError::NoSchema {
                dir: self.root.clone(),
                expected,
            })
        } else {
            Err(DataDirError::SchemaMismatch {
                dir: self.root.clone(),
                found: self.schema,
                expected,
            })
        }
    }
    /// Where the write-ahead log lives.
    pub fn wal_dir(&self) -> PathBuf {
        self.root.join(WAL_DIR)
    }

    /// Where snapshots live.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join("snap")
    }
}

/// Whether `dir` holds any file (a missing directory holds none; any other
/// error to list it is an error, not "empty").
fn holds_files<V: Vfs>(vfs: &V, dir: &Path) -> Result<bool, DataDirError> {
    match vfs.list(dir) {
        Ok(names) => Ok(!names.is_empty()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Checks an initialized directory against who opens it: its identity
/// file names this cluster, node and schema, and its log is there
/// (invariant 3).
fn check_existing<V: Vfs>(
    vfs: &V,
    root: &Path,
    cluster_id: &str,
    node: NodeId,
    schema: u64,
) -> Result<(), DataDirError> {
    let text = read_small(vfs, &root.join(META_FILE))?;
    let (found_cluster, found_node, found_schema) =
        parse_meta(&text).map_err(|reason| DataDirError::BadMeta {
            dir: root.to_path_buf(),
            reason,
        })?;
    if found_cluster != cluster_id {
        return Err(DataDirError::ClusterMismatch {
            dir: root.to_path_buf(),
            found: found_cluster,
            expected: cluster_id.to_string(),
        });
    }
    if found_node != node {
        return Err(DataDirError::NodeMismatch {
            dir: root.to_path_buf(),
            found: found_node,
            expected: node,
        });
    }
    if found_schema == 0 && schema != 0 {
        return Err(DataDirError::NoSchema {
            dir: root.to_path_buf(),
            expected: schema,
        });
    }
    if found_schema != 0 && schema == 0 {
        return Err(DataDirError::TypedOpenedRaw {
            dir: root.to_path_buf(),
            found: found_schema,
        });
    }
    if found_schema != schema {
        return Err(DataDirError::SchemaMismatch {
            dir: root.to_path_buf(),
            found: found_schema,
            expected: schema,
        });
    }
    // Invariant 3: an initialized directory always has its log.
    // An emptied `wal/` beside snapshots lost its term and vote too.
    let wal = root.join(WAL_DIR);
    let missing = match vfs.list(&wal) {
        Ok(names) => names.is_empty() && holds_files(vfs, &root.join("snap"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(io_err(&wal)(e)),
    };
    if missing {
        return Err(DataDirError::MissingWal {
            dir: root.to_path_buf(),
            wal,
        });
    }
    Ok(())
}

/// Initializes a directory that holds no identity file: refuses one that
/// holds data, else creates the log directory and then the identity file,
/// each durably (invariant 3).
fn initialize<V: Vfs>(
    vfs: &V,
    root: &Path,
    cluster_id: &str,
    node: NodeId,
    schema: u64,
) -> Result<(), DataDirError> {
    // Data without an identity could belong to anyone: refuse it.
    let data = holds_files(vfs, &root.join(WAL_DIR))? || holds_files(vfs, &root.join("snap"))?;
    if data {
        return Err(DataDirError::BadMeta {
            dir: root.to_path_buf(),
            reason: "it holds data but no identity file (meta); refusing to guess \
                         which cluster it belongs to"
                .into(),
        });
    }
    // The log directory first, durably (invariant 3).
    let wal = root.join(WAL_DIR);
    vfs.create_dir_all(&wal).map_err(io_err(&wal))?;
    vfs.sync_dir(root).map_err(io_err(root))?;
    write_atomically(
        vfs,
        root,
        META_FILE,
        META_TMP,
        &render_meta(cluster_id, node, schema),
    )?;
    Ok(())
}

mod cluster;

pub use cluster::StoredCluster;

#[cfg(test)]
mod tests;
