//! The voter set `ha-kv serve` starts with: `--peers` on a node's first
//! start, the stored one ever after.
//!
//! Owns: turning `--peers` into the voters to store, and the stored voters
//! into the node's peers. The data directory stores the configuration
//! ([`DataDir::bootstrap_or_check_membership`]).
//!
//! Invariants:
//! 1. A node's voter set comes from its data directory once it has started
//!    once: `--peers` may then be left out, and a `--peers` that differs is
//!    refused (exit 2, one line naming the stored voters). Restarting one
//!    node of three with only itself as voter would otherwise let it elect
//!    itself and acknowledge writes alone: a split brain.
//! 2. A new data directory needs `--peers`; it is stored before the node
//!    writes anything to its log.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ha_core::storage::{DataDir, DataDirError, StdFs};
use ha_core::types::NodeId;

use crate::cli::parse_addr;
use crate::usage_error;

/// Parses `--peers` (`ID=HOST:PORT,...`), checking every address resolves;
/// exits 2 with one line on a mistake. Keeps the addresses as written (they
/// are what is stored), trimmed.
pub fn parse_peers(list: &[String]) -> BTreeMap<NodeId, String> {
    let mut peers = BTreeMap::new();
    for p in list {
        let Some((id, addr)) = p.split_once('=') else {
            usage_error(format!("--peers: '{p}' is not ID=HOST:PORT"));
        };
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .unwrap_or_else(|| {
                usage_error(format!("--peers: '{id}' is not a node id (1, 2, ...)"))
            });
        let addr = addr.trim();
        parse_addr("--peers", addr);
        if peers.insert(NodeId(id), addr.to_string()).is_some() {
            usage_error(format!("--peers: node {id} is listed twice"));
        }
    }
    peers
}

/// The voters to give the data directory for `--peers`: the listed ones,
/// and this node (at `listen`) if the list leaves it out.
pub fn voters_from_peers(
    peers: &BTreeMap<NodeId, String>,
    me: NodeId,
    listen: &str,
) -> BTreeMap<NodeId, String> {
    let mut voters = peers.clone();
    voters
        .entry(me)
        .or_insert_with(|| listen.trim().to_string());
    voters
}

/// Why a start's voters were refused: one line for the operator.
pub fn refusal(e: &DataDirError) -> String {
    match e {
        DataDirError::MembershipMismatch { stored, .. } => format!(
            "--peers: {e}; restart with --peers {stored}, or without --peers (then the stored \
             voters are used)"
        ),
        _ => format!("--data-dir: {e}"),
    }
}

/// The node's voters (ids and addresses): the stored ones, after storing
/// `--peers` on a first start or checking it on a later one. Exits 2 with
/// one line when `--peers` disagrees with the stored voters, when a new
/// directory has no `--peers`, or when the stored configuration is damaged.
pub fn voters(
    dir: &DataDir,
    me: NodeId,
    listen: &str,
    peers: &BTreeMap<NodeId, String>,
) -> BTreeMap<NodeId, String> {
    let stored = if peers.is_empty() {
        match dir.stored_cluster(&StdFs) {
            Ok(Some(s)) => s,
            Ok(None) => usage_error(format!(
                "--peers is required on a node's first start (data directory {} holds no \
                 cluster configuration yet)",
                dir.root().display()
            )),
            Err(e) => usage_error(refusal(&e)),
        }
    } else {
        dir.bootstrap_or_check_membership(&StdFs, &voters_from_peers(peers, me, listen))
            .unwrap_or_else(|e| usage_error(refusal(&e)))
    };
    if stored.bootstrapped_now {
        tracing::info!(
            voters = %stored.describe(),
            "stored the cluster's voters in the new data directory"
        );
    }
    stored.voters
}

/// The other voters and where to reach them, resolved; exits 2 with one
/// line when a stored address no longer resolves.
pub fn resolve_peers(
    voters: &BTreeMap<NodeId, String>,
    me: NodeId,
) -> BTreeMap<NodeId, SocketAddr> {
    voters
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, a)| (*id, parse_addr("stored voter address", a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_node_is_a_voter_whether_listed_or_not() {
        let listed: BTreeMap<NodeId, String> =
            [(NodeId(1), "h1:1".into()), (NodeId(2), "h2:1".into())]
                .into_iter()
                .collect();
        assert_eq!(voters_from_peers(&listed, NodeId(1), "0.0.0.0:1"), listed);
        let others: BTreeMap<NodeId, String> =
            [(NodeId(2), "h2:1".to_string())].into_iter().collect();
        let v = voters_from_peers(&others, NodeId(1), " 127.0.0.1:1 ");
        assert_eq!(v[&NodeId(1)], "127.0.0.1:1");
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn a_restart_with_other_peers_is_refused_naming_the_stored_voters() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::open(&StdFs, tmp.path(), "c", NodeId(1)).unwrap();
        let three: BTreeMap<NodeId, String> = (1..=3)
            .map(|i| (NodeId(i), format!("127.0.0.1:{}", 7000 + i)))
            .collect();
        assert_eq!(voters(&dd, NodeId(1), "127.0.0.1:7001", &three), three);
        // Later starts: without --peers, or with the same, get the stored.
        assert_eq!(
            voters(&dd, NodeId(1), "127.0.0.1:7001", &BTreeMap::new()),
            three
        );
        assert_eq!(voters(&dd, NodeId(1), "0.0.0.0:7001", &three), three);
        let alone: BTreeMap<NodeId, String> = [(NodeId(1), "127.0.0.1:7001".to_string())]
            .into_iter()
            .collect();
        let e = dd
            .bootstrap_or_check_membership(&StdFs, &alone)
            .unwrap_err();
        let line = refusal(&e);
        assert!(
            line.contains("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"),
            "{line}"
        );
        assert!(line.starts_with("--peers:"), "{line}");
        assert_eq!(line.lines().count(), 1, "{line}");
        let peers = resolve_peers(&three, NodeId(1));
        assert_eq!(
            peers.keys().copied().collect::<Vec<_>>(),
            [NodeId(2), NodeId(3)]
        );
    }
}
