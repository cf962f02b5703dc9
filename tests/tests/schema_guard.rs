//! A node of a replicated type never runs on a data directory written by
//! another version of the type, however the directory was opened.
//!
//! The story: a warehouse inventory wrote `receive widget 10` and `receive
//! widget 5`; a method was then added at the top of the `impl` and the node
//! restarted on the same directory through `DataDir::open` (which recorded
//! no schema). The old entries replayed as the new method and `total` went
//! from 15 to 0, without an error. Now a typed node checks the directory's
//! schema before it reads anything, and schema 0 is never a wildcard.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::Path;

use ha_core::node::NodeOptions;
use ha_core::storage::{DataDir, DataDirError, StdFs, WalOptions};
use ha_core::types::NodeId;
use ha_core::{ClientOptions, Replicated};
use ha_quic::node::StartError;
use ha_quic::{
    QuicConfig, QuicNode, create_cluster_certs, load_client_identity, load_node_identity,
};

/// The first version of the inventory.
mod v1 {
    use std::collections::BTreeMap;

    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    /// Stock per item.
    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Inventory {
        stock: BTreeMap<String, u32>,
    }

    #[replicated]
    impl Inventory {
        /// Adds `qty` of `item`.
        pub fn receive(&mut self, item: String, qty: u32) {
            *self.stock.entry(item).or_default() += qty;
        }
        /// All items in stock.
        pub fn total(&self) -> u32 {
            self.stock.values().sum()
        }
    }
}

/// The same type with a method added at the top of the `impl`: the old
/// log's commands would decode as calls of it.
mod v2 {
    use std::collections::BTreeMap;

    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    /// Stock per item.
    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Inventory {
        stock: BTreeMap<String, u32>,
    }

    #[replicated]
    impl Inventory {
        /// Empties the stock of `item`.
        pub fn clear(&mut self, item: String) {
            self.stock.remove(&item);
        }
        /// Adds `qty` of `item`.
        pub fn receive(&mut self, item: String, qty: u32) {
            *self.stock.entry(item).or_default() += qty;
        }
        /// All items in stock.
        pub fn total(&self) -> u32 {
            self.stock.values().sum()
        }
    }
}

/// Starts a one-node cluster of `T` on `dir`.
fn start<T: Replicated>(certs: &Path, dir: DataDir) -> Result<QuicNode, StartError> {
    let id = NodeId(1);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let identity = load_node_identity(certs, id).unwrap();
    let quic = QuicConfig::new(id, addr, BTreeMap::new(), identity);
    let opts = NodeOptions::new(id, [id]);
    QuicNode::start_replicated::<T>(opts, quic, Some(socket), dir, WalOptions::default())
}

fn open_raw(root: &Path, certs: &Path) -> Result<DataDir, DataDirError> {
    let cluster = load_node_identity(certs, NodeId(1)).unwrap().cluster_id();
    DataDir::open(&StdFs, root, &cluster, NodeId(1))
}

fn open_for<T: Replicated>(root: &Path, certs: &Path) -> Result<DataDir, DataDirError> {
    let cluster = load_node_identity(certs, NodeId(1)).unwrap().cluster_id();
    DataDir::open_for::<T, _>(&StdFs, root, &cluster, NodeId(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_type_is_refused_on_the_old_directory_however_it_was_opened() {
    let certs = tempfile::tempdir().unwrap();
    create_cluster_certs(certs.path(), &[NodeId(1)]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let root = data.path().join("node-1");

    // The path the experiment took: a directory opened without a schema is
    // refused by a typed node, before anything is read or written.
    {
        let raw = open_raw(&root, certs.path()).unwrap();
        let err = start::<v1::Inventory>(certs.path(), raw)
            .err()
            .expect("refused");
        assert!(
            matches!(err, StartError::DataDir(DataDirError::NoSchema { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("open_for"), "{err}");
    }
    std::fs::remove_dir_all(&root).unwrap();

    // Version 1 writes its entries.
    {
        let dir = open_for::<v1::Inventory>(&root, certs.path()).unwrap();
        let node = start::<v1::Inventory>(certs.path(), dir).unwrap();
        let client = ha_quic::connect::<v1::Inventory>(
            vec![node.local_addr()],
            &load_client_identity(certs.path()).unwrap(),
            ClientOptions::default(),
        )
        .unwrap();
        client.receive("widget".into(), 10).await.unwrap();
        client.receive("widget".into(), 5).await.unwrap();
        assert_eq!(client.total().await.unwrap(), 15);
        node.shutdown().await;
    }

    // Version 2 on the same directory: refused, through either way of
    // opening it.
    let err =
        open_for::<v2::Inventory>(&root, certs.path()).expect_err("another schema is refused");
    assert!(matches!(err, DataDirError::SchemaMismatch { .. }), "{err}");
    // `main() -> Result<(), Box<dyn Error>>` prints with Debug: it shows the
    // explanation, not the struct.
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert_eq!(format!("{boxed:?}"), boxed.to_string());
    assert!(
        format!("{boxed:?}").contains("would be misread"),
        "{boxed:?}"
    );
    let err = open_raw(&root, certs.path()).expect_err("schema 0 is no wildcard");
    assert!(matches!(err, DataDirError::TypedOpenedRaw { .. }), "{err}");
    // A directory opened for version 1 cannot be handed to version 2.
    {
        let dir = open_for::<v1::Inventory>(&root, certs.path()).unwrap();
        let err = start::<v2::Inventory>(certs.path(), dir)
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                StartError::DataDir(DataDirError::SchemaMismatch { .. })
            ),
            "{err}"
        );
    }

    // Version 1 still finds everything it wrote.
    let dir = open_for::<v1::Inventory>(&root, certs.path()).unwrap();
    let node = start::<v1::Inventory>(certs.path(), dir).unwrap();
    let client = ha_quic::connect::<v1::Inventory>(
        vec![node.local_addr()],
        &load_client_identity(certs.path()).unwrap(),
        ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(client.total().await.unwrap(), 15);
    node.shutdown().await;
}

/// A directory is never used by another node than its own, and a typed
/// applier cannot bypass the checks through the raw start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_another_node_and_a_typed_raw_start_are_refused() {
    let certs = tempfile::tempdir().unwrap();
    create_cluster_certs(certs.path(), &[NodeId(1), NodeId(2)]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = open_for::<v1::Inventory>(&data.path().join("n1"), certs.path()).unwrap();
    let identity = load_node_identity(certs.path(), NodeId(2)).unwrap();
    let quic = QuicConfig::new(
        NodeId(2),
        "127.0.0.1:0".parse().unwrap(),
        BTreeMap::from([(NodeId(1), "127.0.0.1:9".parse().unwrap())]),
        identity,
    );
    let opts = NodeOptions::new(NodeId(2), [NodeId(1), NodeId(2)]);
    let err = QuicNode::start_replicated::<v1::Inventory>(
        opts.clone(),
        quic.clone(),
        None,
        dir,
        WalOptions::default(),
    )
    .err()
    .expect("node 2 on node 1's directory");
    assert!(
        matches!(err, StartError::DataDir(DataDirError::NodeMismatch { .. })),
        "{err}"
    );
    let err = QuicNode::start_on(
        opts,
        quic,
        None,
        Default::default(),
        ha_core::node::NodeStorage::<ha_core::storage::StdFs>::Memory(
            ha_core::storage::MemLogStore::new(),
        ),
        ha_core::sm::Sessions::<v1::Inventory>::new(),
    )
    .err()
    .expect("a typed applier through the raw start");
    assert!(err.to_string().contains("start_replicated"), "{err}");
}

/// The core's own start, for drivers of one's own, cannot skip the check
/// either: a typed applier on a durable log is refused by `start_node`, and
/// `start_checked_node` takes only a directory checked for the applier's
/// own type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cores_own_start_refuses_a_typed_log_it_has_not_checked() {
    use ha_core::node::{NodeStorage, start_checked_node, start_node};
    use ha_core::sm::Sessions;
    use ha_core::storage::{SnapshotStore, Wal};
    let certs = tempfile::tempdir().unwrap();
    create_cluster_certs(certs.path(), &[NodeId(1)]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = open_for::<v1::Inventory>(&data.path().join("n1"), certs.path()).unwrap();
    let storage = || {
        let (wal, _) = Wal::open(StdFs, &dir.wal_dir(), WalOptions::default()).unwrap();
        let snapshots = SnapshotStore::open(StdFs, &dir.snapshot_dir()).unwrap();
        NodeStorage::<StdFs>::Durable {
            wal,
            snapshots: std::sync::Arc::new(snapshots),
        }
    };
    let opts = NodeOptions::new(NodeId(1), [NodeId(1)]);
    let transport =
        || std::sync::Arc::new(ha_core::transport::MemNetwork::new().transport(NodeId(1)));
    let err = start_node(
        opts.clone(),
        Default::default(),
        storage(),
        transport(),
        Sessions::<v1::Inventory>::new(),
    )
    .err()
    .expect("a typed applier on a durable log, unchecked");
    assert!(err.to_string().contains("start_checked_node"), "{err}");
    // Checked for v1, but the applier runs v2.
    let checked = dir.check_schema::<v1::Inventory>().unwrap();
    let err = start_checked_node(
        checked.clone(),
        opts.clone(),
        Default::default(),
        storage(),
        transport(),
        Sessions::<v2::Inventory>::new(),
    )
    .err()
    .expect("a directory checked for another type");
    assert!(err.to_string().contains("checked for schema"), "{err}");
    // Checked, but the log of another directory.
    let other = open_raw(&data.path().join("other"), certs.path()).unwrap();
    let (wal, _) = Wal::open(StdFs, &other.wal_dir(), WalOptions::default()).unwrap();
    let err = start_checked_node(
        checked.clone(),
        opts.clone(),
        Default::default(),
        NodeStorage::<StdFs>::Durable {
            wal,
            snapshots: std::sync::Arc::new(
                SnapshotStore::open(StdFs, &other.snapshot_dir()).unwrap(),
            ),
        },
        transport(),
        Sessions::<v1::Inventory>::new(),
    )
    .err()
    .expect("a proof for one directory, the log of another");
    assert!(
        err.to_string().contains("not the one of the checked"),
        "{err}"
    );
    // Checked for its own type: it starts.
    let node = start_checked_node(
        checked,
        opts,
        Default::default(),
        storage(),
        transport(),
        Sessions::<v1::Inventory>::new(),
    )
    .expect("checked for its own type");
    node.shutdown().await;
}

/// The ledger of `ha-core/tests/schema.rs`, in another crate and spelled
/// otherwise (other argument and type names, paths, and a query of its
/// own): its stored fingerprint is the value pinned there. The
/// fingerprint is a function of what is stored, not of the source text or
/// the crate it is written in.
mod ledger_elsewhere {
    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    #[derive(Default, Serialize, Deserialize)]
    pub struct Line {
        pub item: ::std::string::String,
        pub qty: core::primitive::i32,
    }

    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Book {
        pub entries: Vec<Line>,
    }

    #[replicated]
    impl Book {
        /// Appends a line; returns how many there are.
        pub fn record(&mut self, new_line: Line) -> usize {
            self.entries.push(new_line);
            self.entries.len()
        }
        /// A query: never in the stored fingerprint.
        pub fn lines(&self) -> u64 {
            self.entries.len() as u64
        }
    }
}

#[test]
fn the_stored_fingerprint_is_the_same_from_another_crate() {
    let s = ha_core::schema::Schema::of::<ledger_elsewhere::Book>().unwrap();
    assert_eq!(s.stored(), 0xcd89_feb2_c0f7_9203, "{}", s.stored_shape());
}
