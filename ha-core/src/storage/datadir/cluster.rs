//! The cluster file, `DIR/cluster`: the voter set a node was first
//! started with, stored once, durably, before any log entry exists, and
//! checked on every later start (the directory's invariant 4).

use super::*;

/// The voter set a cluster was first started with, as `DIR/cluster` holds
/// it (see the module docs, invariant 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCluster {
    /// Voter ids and the addresses (`HOST:PORT`) they are reached at.
    pub voters: BTreeMap<NodeId, String>,
    /// Whether this call stored it (the directory was new to it).
    pub bootstrapped_now: bool,
}

impl StoredCluster {
    /// The voters as `ID=HOST:PORT,...`, in id order.
    pub fn describe(&self) -> String {
        describe(&self.voters)
    }
}

fn describe(voters: &BTreeMap<NodeId, String>) -> String {
    voters
        .iter()
        .map(|(id, a)| format!("{}={a}", id.0))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn render_cluster(voters: &BTreeMap<NodeId, String>) -> String {
    let mut body = format!("{CLUSTER_HEADER}\n");
    if voters.is_empty() {
        // A node started to be added to a running cluster: its
        // configuration comes from its leader's log.
        body.push_str("joining\n");
    }
    for (id, addr) in voters {
        body.push_str(&format!("voter={} {addr}\n", id.0));
    }
    format!("{body}crc32c={:08x}\n", crc32c::crc32c(body.as_bytes()))
}

/// Whether `addr` can be stored on one `voter=` line.
fn storable_addr(addr: &str) -> bool {
    !addr.is_empty() && !addr.chars().any(char::is_whitespace)
}

pub(super) fn parse_cluster(text: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let body = checked_body(text, "configuration file")?;
    let mut lines = body.lines();
    if lines.next() != Some(CLUSTER_HEADER) {
        return Err("configuration file has an unknown format".into());
    }
    let mut voters = BTreeMap::new();
    let mut joining = false;
    for line in lines {
        if line == "joining" && !joining {
            joining = true;
            continue;
        }
        let (id, addr) = line
            .strip_prefix("voter=")
            .and_then(|l| l.split_once(' '))
            .ok_or_else(|| format!("unreadable line {line:?}"))?;
        let id: u64 = id
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| format!("bad voter id in {line:?}"))?;
        if !storable_addr(addr) {
            return Err(format!("bad address in {line:?}"));
        }
        if voters.insert(NodeId(id), addr.to_string()).is_some() {
            return Err(format!("voter {id} is listed twice"));
        }
    }
    match (joining, voters.is_empty()) {
        (false, true) => Err("no voters".into()),
        (true, false) => Err("a joining node lists voters".into()),
        _ => Ok(voters),
    }
}

impl DataDir {
    /// The stored bootstrap configuration, if the node has started before.
    pub fn stored_cluster<V: Vfs>(&self, vfs: &V) -> Result<Option<StoredCluster>, DataDirError> {
        let names = vfs.list(&self.root).map_err(io_err(&self.root))?;
        if !names.iter().any(|n| n == CLUSTER_FILE) {
            return Ok(None);
        }
        let file = self.root.join(CLUSTER_FILE);
        let text = read_small(vfs, &file)?;
        let voters = parse_cluster(&text).map_err(|reason| DataDirError::BadCluster {
            dir: self.root.clone(),
            file: file.clone(),
            reason,
        })?;
        Ok(Some(StoredCluster {
            voters,
            bootstrapped_now: false,
        }))
    }

    /// On a node's first start as a node to be added to a running cluster
    /// (`serve --join`), stores that it starts in no configuration (its
    /// leader's log brings one); on a later start returns what is stored.
    /// A directory that holds a log or snapshots but no stored
    /// configuration is refused, as in
    /// [`DataDir::bootstrap_or_check_membership`].
    pub fn bootstrap_joining<V: Vfs>(&self, vfs: &V) -> Result<StoredCluster, DataDirError> {
        if let Some(stored) = self.stored_cluster(vfs)? {
            return Ok(stored);
        }
        if holds_files(vfs, &self.wal_dir())? || holds_files(vfs, &self.snapshot_dir())? {
            return Err(DataDirError::BadCluster {
                dir: self.root.clone(),
                file: self.root.join(CLUSTER_FILE),
                reason: "the directory holds a log or snapshots but no stored configuration; \
                         refusing to start it as a new node"
                    .into(),
            });
        }
        let none = BTreeMap::new();
        write_atomically(
            vfs,
            &self.root,
            CLUSTER_FILE,
            CLUSTER_TMP,
            &render_cluster(&none),
        )?;
        Ok(StoredCluster {
            voters: none,
            bootstrapped_now: true,
        })
    }

    /// On a node's first start, stores `voters` (ids and `HOST:PORT`
    /// addresses) as the cluster's configuration, durably, before any log
    /// entry exists; on every later start, checks that `voters` equals the
    /// stored one and returns that. Equal means: the same ids, and the same
    /// address for every id other than this node's own (where this node
    /// listens is its own business). A different set is refused with
    /// [`DataDirError::MembershipMismatch`], naming the stored one: starting
    /// with fewer voters than the cluster has could elect a second leader.
    pub fn bootstrap_or_check_membership<V: Vfs>(
        &self,
        vfs: &V,
        voters: &BTreeMap<NodeId, String>,
    ) -> Result<StoredCluster, DataDirError> {
        let bad = |reason: String| DataDirError::BadCluster {
            dir: self.root.clone(),
            file: self.root.join(CLUSTER_FILE),
            reason,
        };
        if voters.is_empty() {
            return Err(bad("a configuration needs at least one voter".into()));
        }
        if let Some((id, addr)) = voters.iter().find(|(id, a)| id.0 == 0 || !storable_addr(a)) {
            return Err(bad(format!(
                "voter {}={addr:?} is not an id from 1 and a HOST:PORT",
                id.0
            )));
        }
        let stored = self.stored_cluster(vfs)?;
        if stored.is_none()
            && (holds_files(vfs, &self.wal_dir())? || holds_files(vfs, &self.snapshot_dir())?)
        {
            // A log without a stored configuration (a directory from before
            // voters were stored): storing whatever is given now could make
            // a one-node voter set of one node of three. Refuse.
            return Err(bad(
                "the directory holds a log or snapshots but no stored voters; refusing to \
                 take them from the command line"
                    .into(),
            ));
        }
        if let Some(stored) = stored {
            let same = stored.voters.len() == voters.len()
                && stored.voters.iter().all(|(id, a)| match voters.get(id) {
                    Some(b) => *id == self.node || a == b,
                    None => false,
                });
            if !same {
                return Err(DataDirError::MembershipMismatch {
                    dir: self.root.clone(),
                    stored: stored.describe(),
                    given: describe(voters),
                });
            }
            return Ok(stored);
        }
        write_atomically(
            vfs,
            &self.root,
            CLUSTER_FILE,
            CLUSTER_TMP,
            &render_cluster(voters),
        )?;
        Ok(StoredCluster {
            voters: voters.clone(),
            bootstrapped_now: true,
        })
    }
}
