//! A node's data directory: who owns it, and who may use it now.
//!
//! Owns: the directory's lock and its identity file. Layout:
//!
//! ```text
//! DIR/LOCK     held (flock) by the one process using the directory
//! DIR/meta     which cluster and node the data belongs to
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
//!    directory sync), before any log or snapshot exists.

use std::path::{Path, PathBuf};

use super::vfs::{Vfs, VfsFile, VfsLock};
use crate::types::NodeId;

const META_FILE: &str = "meta";
const META_TMP: &str = "meta.tmp";
const LOCK_FILE: &str = "LOCK";
const META_HEADER: &str = "ha data directory, format 1";

/// What can go wrong opening a data directory.
#[derive(Debug, thiserror::Error)]
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
         has schema {expected:016x}: the commands in its log would be misread. Run the build \
         that wrote it, or follow \"Evolving a replicated type\" in the README"
    )]
    SchemaMismatch {
        /// The directory.
        dir: PathBuf,
        /// The schema it holds.
        found: u64,
        /// The schema of this build.
        expected: u64,
    },
    /// The identity file is damaged or missing while data exists.
    #[error("data directory {dir}: {reason}")]
    BadMeta {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
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
    _lock: VfsLock,
}

fn render_meta(cluster_id: &str, node: NodeId, schema: u64) -> String {
    let body = format!(
        "{META_HEADER}\ncluster_id={cluster_id}\nnode_id={}\nschema={schema:016x}\n",
        node.0
    );
    format!("{body}crc32c={:08x}\n", crc32c::crc32c(body.as_bytes()))
}

fn parse_meta(text: &str) -> Result<(String, NodeId, u64), String> {
    let (body, crc_line) = text
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .ok_or("identity file is truncated")?;
    let crc = crc_line
        .strip_prefix("crc32c=")
        .ok_or("identity file has no checksum")?;
    let body = format!("{body}\n");
    if u32::from_str_radix(crc, 16).ok() != Some(crc32c::crc32c(body.as_bytes())) {
        return Err("identity file checksum mismatch".into());
    }
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

    /// Like [`DataDir::open`], for data of a replicated type whose schema
    /// fingerprint is `schema`: a directory of another schema is refused.
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
        vfs.create_dir_all(root).map_err(io_err(root))?;
        let lock = vfs
            .try_lock(&root.join(LOCK_FILE))
            .map_err(io_err(root))?
            .ok_or_else(|| DataDirError::Locked(root.to_path_buf()))?;
        let names = vfs.list(root).map_err(io_err(root))?;
        let meta_path = root.join(META_FILE);
        if names.iter().any(|n| n == META_FILE) {
            let text = vfs.read(&meta_path).map_err(io_err(&meta_path))?;
            let text = String::from_utf8_lossy(&text);
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
            if found_schema != schema {
                return Err(DataDirError::SchemaMismatch {
                    dir: root.to_path_buf(),
                    found: found_schema,
                    expected: schema,
                });
            }
        } else {
            // Data without an identity could belong to anyone: refuse it.
            let data = vfs
                .list(&root.join("wal"))
                .map(|v| !v.is_empty())
                .unwrap_or(false)
                || vfs
                    .list(&root.join("snap"))
                    .map(|v| !v.is_empty())
                    .unwrap_or(false);
            if data {
                return Err(DataDirError::BadMeta {
                    dir: root.to_path_buf(),
                    reason: "it holds data but no identity file (meta); refusing to guess \
                             which cluster it belongs to"
                        .into(),
                });
            }
            let tmp = root.join(META_TMP);
            let mut f = vfs.open(&tmp, true).map_err(io_err(&tmp))?;
            f.set_len(0).map_err(io_err(&tmp))?;
            f.append(render_meta(cluster_id, node, schema).as_bytes())
                .map_err(io_err(&tmp))?;
            f.sync().map_err(io_err(&tmp))?;
            vfs.rename(&tmp, &meta_path).map_err(io_err(&meta_path))?;
            vfs.sync_dir(root).map_err(io_err(root))?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            cluster_id: cluster_id.to_string(),
            node,
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
    /// Where the write-ahead log lives.
    pub fn wal_dir(&self) -> PathBuf {
        self.root.join("wal")
    }
    /// Where snapshots live.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join("snap")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::vfs::{SimFs, StdFs};

    #[test]
    fn a_second_opener_is_refused_until_the_first_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("node1");
        let first = DataDir::open(&StdFs, &d, "c1", NodeId(1)).unwrap();
        let err = DataDir::open(&StdFs, &d, "c1", NodeId(1)).unwrap_err();
        assert!(matches!(err, DataDirError::Locked(_)));
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        drop(first);
        DataDir::open(&StdFs, &d, "c1", NodeId(1)).unwrap();
    }

    #[test]
    fn another_cluster_or_node_is_refused() {
        let fs = SimFs::new();
        let d = Path::new("/n1");
        drop(DataDir::open(&fs, d, "cluster-a", NodeId(1)).unwrap());
        let err = DataDir::open(&fs, d, "cluster-b", NodeId(1)).unwrap_err();
        assert!(matches!(err, DataDirError::ClusterMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains("belongs to cluster \"cluster-a\""),
            "{err}"
        );
        let err = DataDir::open(&fs, d, "cluster-a", NodeId(2)).unwrap_err();
        assert!(matches!(err, DataDirError::NodeMismatch { .. }), "{err}");
        let err = DataDir::open_with_schema(&fs, d, "cluster-a", NodeId(1), 42).unwrap_err();
        assert!(matches!(err, DataDirError::SchemaMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains("Evolving a replicated type"),
            "{err}"
        );
        let dd = DataDir::open(&fs, d, "cluster-a", NodeId(1)).unwrap();
        assert_eq!(dd.cluster_id(), "cluster-a");
        assert_eq!(dd.wal_dir(), Path::new("/n1/wal"));
    }

    #[test]
    fn a_damaged_identity_or_data_without_one_is_refused() {
        let fs = SimFs::new();
        let d = Path::new("/n1");
        drop(DataDir::open(&fs, d, "c", NodeId(1)).unwrap());
        fs.corrupt(&d.join(META_FILE), 40).unwrap();
        let err = DataDir::open(&fs, d, "c", NodeId(1)).unwrap_err();
        assert!(matches!(err, DataDirError::BadMeta { .. }), "{err}");
        let d2 = Path::new("/n2");
        fs.create_dir_all(&d2.join("wal")).unwrap();
        fs.open(&d2.join("wal/wal-0000000000000001.log"), true)
            .unwrap();
        let err = DataDir::open(&fs, d2, "c", NodeId(1)).unwrap_err();
        assert!(err.to_string().contains("no identity file"), "{err}");
    }
}
