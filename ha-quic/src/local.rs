//! An embedded cluster on loopback: for tests, examples and demos.
//!
//! Owns: temporary certificate and data directories, one node per id, each
//! on its own tokio runtime with its own locked data directory, real QUIC
//! with mutual TLS, and the durable write-ahead log.
//!
//! Killing a node shuts its runtime down without waiting: its tasks are
//! dropped at their next await, its connections are not closed politely,
//! and its socket goes silent, as after kill -9. Writes already handed to the
//! storage thread may still complete; nothing unsynced was ever
//! acknowledged. Restarting reopens the same data directory on the same
//! address.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use ha_core::ClientOptions;
use ha_core::node::{NodeOptions, NodeStatus};
use ha_core::raft::RoleKind;
use ha_core::sm::Replicated;
use ha_core::storage::{DataDir, StdFs, WalOptions};
use ha_core::types::NodeId;

use crate::certs::{TlsIdentity, create_cluster_certs, load_client_identity, load_node_identity};
use crate::node::QuicNode;
use crate::transport::QuicConfig;

/// What can go wrong starting or restarting a local cluster.
#[derive(thiserror::Error)]
pub enum LocalClusterError {
    /// A file or socket operation failed.
    #[error("local cluster: {0}")]
    Io(#[from] std::io::Error),
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    /// A data directory was refused.
    #[error(transparent)]
    DataDir(#[from] ha_core::storage::DataDirError),
    /// The log could not be opened.
    #[error(transparent)]
    Wal(#[from] ha_core::storage::WalError),
    /// A node could not start.
    #[error(transparent)]
    Start(#[from] crate::node::StartError),
    /// The id is not a member of this cluster.
    #[error("node {0} is not a member of this cluster")]
    UnknownNode(u64),
    /// A membership change failed, or did not complete in time.
    #[error("membership change {change:?}: {why}")]
    Membership {
        /// The change.
        change: ha_core::raft::ConfChange,
        /// Why.
        why: String,
    },
}

ha_core::debug_as_display!(LocalClusterError);

struct Running {
    rt: tokio::runtime::Runtime,
    /// Holds the node's data directory (and its lock).
    node: QuicNode,
}

/// An embedded cluster of `T` (see the module docs).
pub struct LocalCluster<T: Replicated> {
    certs: tempfile::TempDir,
    data: tempfile::TempDir,
    /// Every member's address (the first ones and those added since).
    addrs: BTreeMap<NodeId, SocketAddr>,
    /// The voters the cluster was started with: what their data
    /// directories store as their bootstrap configuration.
    initial: BTreeMap<NodeId, SocketAddr>,
    /// Nodes added after the start (they started in no configuration).
    joined: std::collections::BTreeSet<NodeId>,
    /// The next id [`LocalCluster::add_node`] gives (ids are never reused).
    next_id: u64,
    running: BTreeMap<NodeId, Running>,
    client_identity: TlsIdentity,
    opts: LocalOptions,
    _t: PhantomData<fn() -> T>,
}

/// Settings of a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Length of one tick (heartbeat interval).
    pub tick: Duration,
    /// Snapshot and compact after this many applied entries (`None`: never).
    pub snapshot_every_entries: Option<u64>,
    /// Size at which a log segment is sealed.
    pub wal_segment_bytes: u64,
}

impl Default for LocalOptions {
    fn default() -> LocalOptions {
        LocalOptions {
            tick: Duration::from_millis(50),
            snapshot_every_entries: None,
            wal_segment_bytes: WalOptions::default().segment_max_bytes,
        }
    }
}

impl<T: Replicated> LocalCluster<T> {
    /// Starts `n` nodes (ids 1..=n) on 127.0.0.1 with ports from the OS.
    pub async fn start(n: usize) -> Result<LocalCluster<T>, LocalClusterError> {
        LocalCluster::start_with(n, LocalOptions::default()).await
    }

    /// Like [`LocalCluster::start`], with settings.
    pub async fn start_with(
        n: usize,
        opts: LocalOptions,
    ) -> Result<LocalCluster<T>, LocalClusterError> {
        let certs = tempfile::tempdir()?;
        let data = tempfile::tempdir()?;
        let ids: Vec<NodeId> = (1..=n as u64).map(NodeId).collect();
        create_cluster_certs(certs.path(), &ids)?;
        let mut sockets = Vec::new();
        let mut addrs = BTreeMap::new();
        for id in &ids {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            addrs.insert(*id, s.local_addr()?);
            sockets.push((*id, s));
        }
        let mut cluster = LocalCluster {
            client_identity: load_client_identity(certs.path())?,
            certs,
            data,
            initial: addrs.clone(),
            addrs,
            joined: std::collections::BTreeSet::new(),
            next_id: n as u64 + 1,
            running: BTreeMap::new(),
            opts,
            _t: PhantomData,
        };
        for (id, socket) in sockets {
            cluster.boot(id, socket)?;
        }
        Ok(cluster)
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.data.path().join(format!("node-{}", id.0))
    }

    fn boot(&mut self, id: NodeId, socket: UdpSocket) -> Result<(), LocalClusterError> {
        let identity = load_node_identity(self.certs.path(), id)?;
        let dir =
            DataDir::open_for::<T, _>(&StdFs, &self.data_dir(id), &identity.cluster_id(), id)?;
        // The voters are stored on a node's first start and checked on
        // every restart (a node never starts with another voter set); a
        // node added later starts in no configuration.
        let stored = if self.joined.contains(&id) {
            dir.bootstrap_joining(&StdFs)?
        } else {
            dir.bootstrap_or_check_membership(
                &StdFs,
                &self
                    .initial
                    .iter()
                    .map(|(i, a)| (*i, a.to_string()))
                    .collect(),
            )?
        };
        // As a server does: the transport starts with the bootstrap
        // voters' addresses (none for a node added later); members added
        // since are learned from the configuration the node recovers, or
        // from their connections.
        let peers = self
            .initial
            .iter()
            .filter(|(p, _)| **p != id && stored.voters.contains_key(p))
            .map(|(p, a)| (*p, *a))
            .collect();
        let quic = QuicConfig::new(id, self.addrs[&id], peers, identity);
        let mut opts = NodeOptions::new(id, stored.voters.keys().copied());
        opts.membership.addrs = stored.voters.clone();
        opts.joining = stored.voters.is_empty();
        opts.tick = self.opts.tick;
        opts.snapshot_every_entries = self.opts.snapshot_every_entries;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("ha-node-{}", id.0))
            .enable_all()
            .build()?;
        let node = {
            let _enter = rt.enter();
            let wal_opts = WalOptions::with_segment_max_bytes(self.opts.wal_segment_bytes);
            QuicNode::start_replicated::<T>(opts, quic, Some(socket), dir, wal_opts)?
        };
        self.running.insert(id, Running { rt, node });
        Ok(())
    }

    /// A typed client that finds the leader itself.
    pub fn client(&self) -> T::Client {
        self.client_with(ClientOptions::default())
    }

    /// A typed client with the given options.
    pub fn client_with(&self, opts: ClientOptions) -> T::Client {
        crate::client::connect::<T>(self.addrs.values().copied(), &self.client_identity, opts)
            .expect("a client endpoint binds on loopback")
    }

    /// The leader of the highest term among live nodes, waiting up to a few
    /// election timeouts for one to emerge; `None` if there is none.
    pub async fn leader(&self) -> Option<u64> {
        for _ in 0..100 {
            let best = self
                .running
                .values()
                .map(|r| r.node.handle().status())
                .filter(|s| s.role == RoleKind::Leader)
                .max_by_key(|s| s.term);
            if let Some(s) = best {
                return Some(s.id.0);
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        None
    }

    /// The directory holding the cluster's CA and the node and client
    /// certificates.
    pub fn tls_dir(&self) -> &std::path::Path {
        self.certs.path()
    }

    /// A client that talks to node `id` only, with stale reads: it sees that
    /// node's own applied state (for tests comparing replicas).
    pub fn stale_client_of(&self, id: u64) -> Option<T::Client> {
        let addr = self.addr(id)?;
        let opts = ClientOptions {
            consistency: ha_core::Consistency::Stale,
            ..ClientOptions::default()
        };
        crate::client::connect::<T>(vec![addr], &self.client_identity, opts).ok()
    }

    /// The index node `id`'s newest snapshot covers (0 if none, or if it
    /// does not run).
    pub fn snapshot_index(&self, id: u64) -> ha_core::types::LogIndex {
        self.running
            .get(&NodeId(id))
            .map_or(ha_core::types::LogIndex(0), |r| {
                r.node.handle().status().snapshot_index
            })
    }

    /// Bytes on disk in node `id`'s data directory (log and snapshots).
    pub fn disk_bytes(&self, id: u64) -> u64 {
        fn walk(p: &std::path::Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        }
        walk(&self.data_dir(NodeId(id)))
    }

    /// Ids of all members.
    pub fn node_ids(&self) -> Vec<u64> {
        self.addrs.keys().map(|n| n.0).collect()
    }

    /// Where node `id` listens.
    pub fn addr(&self, id: u64) -> Option<SocketAddr> {
        self.addrs.get(&NodeId(id)).copied()
    }

    /// A handle on node `id`, if it runs (proposals, leadership transfer,
    /// status in process).
    pub fn handle(&self, id: u64) -> Option<ha_core::node::NodeHandle> {
        self.running
            .get(&NodeId(id))
            .map(|r| r.node.handle().clone())
    }

    /// The peers node `id`'s transport knows, with their addresses (empty
    /// if it does not run).
    pub fn peers_of(&self, id: u64) -> Vec<(u64, SocketAddr)> {
        self.running.get(&NodeId(id)).map_or(Vec::new(), |r| {
            r.node
                .transport()
                .peers()
                .into_iter()
                .map(|(p, a)| (p.0, a))
                .collect()
        })
    }

    /// Snapshots node `id`'s transport has received (0 if it does not run).
    pub fn snapshots_received(&self, id: u64) -> u64 {
        self.running.get(&NodeId(id)).map_or(0, |r| {
            r.node
                .transport()
                .stats()
                .snapshots_received
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Node `id`'s status, if it runs.
    pub fn status(&self, id: u64) -> Option<NodeStatus> {
        self.running
            .get(&NodeId(id))
            .map(|r| r.node.handle().status())
    }

    /// Kills node `id` abruptly (see the module docs). Unknown or dead ids
    /// are ignored.
    pub async fn kill(&mut self, id: u64) {
        if let Some(r) = self.running.remove(&NodeId(id)) {
            let Running { rt, node } = r;
            // Wait (off this runtime) until every task of the node is gone,
            // so its storage thread has let go of the log before anyone
            // reopens it; only then release the directory lock (the node
            // holds it).
            let _ = tokio::task::spawn_blocking(move || {
                rt.shutdown_timeout(Duration::from_secs(10));
                drop(node);
            })
            .await;
        }
    }

    /// Restarts node `id` from its data directory on its old address.
    pub async fn restart(&mut self, id: u64) -> Result<(), LocalClusterError> {
        let nid = NodeId(id);
        let addr = *self
            .addrs
            .get(&nid)
            .ok_or(LocalClusterError::UnknownNode(id))?;
        if self.running.contains_key(&nid) {
            return Ok(());
        }
        let socket = UdpSocket::bind(addr)?;
        self.boot(nid, socket)
    }

    /// Adds a node: a new id (never one used before) with its certificate,
    /// started in no configuration, known to every running node's
    /// transport, added as a learner, and promoted to voter once it has
    /// caught up. Returns its id.
    pub async fn add_node(&mut self) -> Result<u64, LocalClusterError> {
        let id = NodeId(self.next_id);
        self.next_id += 1;
        create_cluster_certs(self.certs.path(), &[id])?;
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        self.addrs.insert(id, addr);
        self.joined.insert(id);
        self.boot(id, socket)?;
        // The address travels with the configuration: every node's
        // transport learns it from the entry that adds the learner.
        self.change(ha_core::raft::ConfChange::AddLearner(
            id,
            Some(addr.to_string()),
        ))
        .await?;
        self.change(ha_core::raft::ConfChange::Promote(id)).await?;
        Ok(id.0)
    }

    /// Removes node `id` from the configuration (a leader hands leadership
    /// over first), then stops it and forgets its address.
    pub async fn remove_node(&mut self, id: u64) -> Result<(), LocalClusterError> {
        let nid = NodeId(id);
        if !self.addrs.contains_key(&nid) {
            return Err(LocalClusterError::UnknownNode(id));
        }
        self.change(ha_core::raft::ConfChange::Remove(nid)).await?;
        self.kill(id).await;
        // The others' transports forget it once its removal is committed
        // and the leader has told it.
        self.addrs.remove(&nid);
        Ok(())
    }

    /// Replaces node `id` by a new one: adds the new node (caught up,
    /// promoted), then removes `id`. Returns the new node's id.
    pub async fn replace_node(&mut self, id: u64) -> Result<u64, LocalClusterError> {
        let new = self.add_node().await?;
        self.remove_node(id).await?;
        Ok(new)
    }

    /// Runs `change` on the leader until it is done: retried (at the
    /// leader of the moment) while another change is in flight, the
    /// learner catches up, or leadership moves; at most 60 s.
    async fn change(&self, change: ha_core::raft::ConfChange) -> Result<(), LocalClusterError> {
        use ha_core::node::NodeError;
        use ha_core::raft::ConfChangeError;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = String::from("no leader");
        while tokio::time::Instant::now() < deadline {
            let handle = match self.leader().await {
                Some(l) => self.handle(l),
                None => None,
            };
            if let Some(h) = handle {
                // Each attempt within what is left: a change that cannot
                // complete (its learner stopped answering) keeps waiting.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let attempt = tokio::time::timeout(left, h.change_membership(change.clone())).await;
                let Ok(answer) = attempt else {
                    break;
                };
                match answer {
                    Ok(_) => return Ok(()),
                    Err(
                        e @ (NodeError::NotLeader { .. }
                        | NodeError::ChangeInDoubt { .. }
                        | NodeError::Busy
                        | NodeError::Stopped(_)
                        | NodeError::Membership(
                            ConfChangeError::InProgress
                            | ConfChangeError::NotCaughtUp { .. }
                            | ConfChangeError::Transferring { .. },
                        )),
                    ) => last = e.to_string(),
                    Err(e) => {
                        return Err(LocalClusterError::Membership {
                            change,
                            why: e.to_string(),
                        });
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LocalClusterError::Membership {
            change,
            why: format!("not done within 60 s; last: {last}"),
        })
    }

    /// Stops every node cleanly.
    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.running.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.running.get(&id) {
                let h = r.node.handle().clone();
                let done = {
                    let _enter = r.rt.enter();
                    tokio::spawn(async move { h.shutdown().await })
                };
                let _ = done.await;
            }
            self.kill(id.0).await;
        }
    }
}

impl<T: Replicated> Drop for LocalCluster<T> {
    fn drop(&mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            r.rt.shutdown_background();
        }
    }
}
