//! The voter set a server starts with: `--peers` on a node's first start,
//! the stored one ever after.
//!
//! Owns: parsing `ID=HOST:PORT` lists and addresses, turning `--peers` into
//! the voters to store, and the stored voters into the node's peers. The
//! data directory stores the configuration
//! ([`DataDir::bootstrap_or_check_membership`]).
//!
//! Invariants:
//! 1. A node's voter set comes from its data directory once it has started
//!    once: `--peers` may then be left out, and a `--peers` that differs is
//!    refused, naming the stored voters. Restarting one node of three with
//!    only itself as voter would otherwise let it elect itself and
//!    acknowledge writes alone: a split brain.
//! 2. A new data directory needs `--peers`; it is stored before the node
//!    writes anything to its log.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};

use ha_core::storage::{DataDir, DataDirError, StdFs};
use ha_core::types::NodeId;

use crate::ServeError;

/// Parses `HOST:PORT`, resolving a host name (preferring an IPv4 address,
/// see [`ha_quic::transport::pick_addr`]).
pub fn parse_addr(option: &'static str, s: &str) -> Result<SocketAddr, ServeError> {
    let bad = |reason: String| ServeError::Address {
        option,
        given: s.to_string(),
        reason,
    };
    match s.trim().to_socket_addrs() {
        Ok(a) => ha_quic::transport::pick_addr(a, true)
            .ok_or_else(|| bad("it resolves to no address".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Parses one `ID=HOST:PORT` of `--peers`, checking the id and the
/// address's form (see [`ha_core::raft::check_addr`]); keeps the address
/// as written (it is what is stored), trimmed. A DNS name need not resolve
/// yet (the other nodes of a new cluster may not exist yet): it is
/// resolved when the node reaches that peer, and again while it does not
/// resolve.
pub fn parse_peer(p: &str) -> Result<(NodeId, String), ServeError> {
    let Some((id, addr)) = p.split_once('=') else {
        return Err(ServeError::invalid(
            "--peers",
            format!("'{p}' is not ID=HOST:PORT"),
        ));
    };
    let id: u64 = id.trim().parse().ok().filter(|i| *i > 0).ok_or_else(|| {
        ServeError::invalid("--peers", format!("'{id}' is not a node id (1, 2, ...)"))
    })?;
    let addr = addr.trim();
    if let Err(reason) = ha_core::raft::check_addr(addr) {
        return Err(ServeError::Address {
            option: "--peers",
            given: addr.to_string(),
            reason,
        });
    }
    Ok((NodeId(id), addr.to_string()))
}

/// Adds peers, refusing an id listed twice.
pub fn insert_peer(
    peers: &mut BTreeMap<NodeId, String>,
    (id, addr): (NodeId, String),
) -> Result<(), ServeError> {
    if peers.insert(id, addr).is_some() {
        return Err(ServeError::invalid(
            "--peers",
            format!("node {id} is listed twice"),
        ));
    }
    Ok(())
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

fn refusal(e: DataDirError) -> ServeError {
    match e {
        DataDirError::MembershipMismatch { ref stored, .. } => ServeError::PeersMismatch {
            stored: stored.clone(),
            source: e,
        },
        e => ServeError::DataDir(e),
    }
}

/// The node's voters (ids and addresses): the stored ones, after storing
/// `peers` on a first start or checking them on a later one. Refused when
/// `peers` disagrees with the stored voters, when a new directory has no
/// `peers`, or when the stored configuration is damaged.
pub fn voters(
    dir: &DataDir,
    me: NodeId,
    listen: &str,
    peers: &BTreeMap<NodeId, String>,
) -> Result<BTreeMap<NodeId, String>, ServeError> {
    let stored = if peers.is_empty() {
        match dir.stored_cluster(&StdFs) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(ServeError::invalid(
                    "--peers",
                    format!(
                        "required on a node's first start (data directory {} holds no \
                         cluster configuration yet)",
                        dir.root().display()
                    ),
                ));
            }
            Err(e) => return Err(refusal(e)),
        }
    } else {
        dir.bootstrap_or_check_membership(&StdFs, &voters_from_peers(peers, me, listen))
            .map_err(refusal)?
    };
    if stored.bootstrapped_now {
        tracing::info!(
            voters = %stored.describe(),
            "stored the cluster's voters in the new data directory"
        );
    }
    Ok(stored.voters)
}

/// The voters of a node started to join a running cluster (`--join`):
/// none, stored on its first start; refused if the directory belongs to a
/// member of a cluster already (it was started with `--peers`), since
/// starting it as a newcomer would say it never voted.
pub fn joining(dir: &DataDir) -> Result<BTreeMap<NodeId, String>, ServeError> {
    let stored = dir.bootstrap_joining(&StdFs).map_err(refusal)?;
    if !stored.voters.is_empty() {
        return Err(ServeError::invalid(
            "--join",
            format!(
                "data directory {} was started as a voter of {}: start it without --join",
                dir.root().display(),
                stored.describe()
            ),
        ));
    }
    if stored.bootstrapped_now {
        tracing::info!("stored that this node starts in no configuration: it waits to be added");
    }
    Ok(stored.voters)
}

/// The other voters given as IP addresses, for the transport to start
/// with. A DNS name is not resolved here (no blocking lookup at start-up,
/// and none twice): the node hands the transport every address of the
/// configuration it recovers, which resolves names off its task and
/// retries while they fail (the stored voters are the first
/// configuration, whose members may be long gone, their names with them).
pub fn resolve_peers(
    voters: &BTreeMap<NodeId, String>,
    me: NodeId,
) -> BTreeMap<NodeId, SocketAddr> {
    voters
        .iter()
        .filter(|(id, _)| **id != me)
        .filter_map(|(id, a)| Some((*id, a.trim().parse::<SocketAddr>().ok()?)))
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
    fn peers_are_parsed_and_mistakes_named() {
        assert_eq!(
            parse_peer(" 2 = 127.0.0.1:7002").unwrap(),
            (NodeId(2), "127.0.0.1:7002".to_string())
        );
        for (bad, says) in [
            ("x=127.0.0.1:1", "is not a node id"),
            ("0=127.0.0.1:1", "is not a node id"),
            ("127.0.0.1:1", "is not ID=HOST:PORT"),
            ("1=nowhere", "not a usable HOST:PORT"),
        ] {
            let e = parse_peer(bad).unwrap_err().to_string();
            assert!(e.starts_with("--peers: ") && e.contains(says), "{bad}: {e}");
        }
        let mut peers = BTreeMap::new();
        insert_peer(&mut peers, parse_peer("1=127.0.0.1:1").unwrap()).unwrap();
        let e = insert_peer(&mut peers, parse_peer("1=127.0.0.1:2").unwrap()).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
    }

    #[test]
    fn a_restart_with_other_peers_is_refused_naming_the_stored_voters() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::open(&StdFs, tmp.path(), "c", NodeId(1)).unwrap();
        let three: BTreeMap<NodeId, String> = (1..=3)
            .map(|i| (NodeId(i), format!("127.0.0.1:{}", 7000 + i)))
            .collect();
        assert_eq!(
            voters(&dd, NodeId(1), "127.0.0.1:7001", &three).unwrap(),
            three
        );
        // Later starts: without --peers, or with the same, get the stored.
        assert_eq!(
            voters(&dd, NodeId(1), "127.0.0.1:7001", &BTreeMap::new()).unwrap(),
            three
        );
        assert_eq!(
            voters(&dd, NodeId(1), "0.0.0.0:7001", &three).unwrap(),
            three
        );
        let alone: BTreeMap<NodeId, String> = [(NodeId(1), "127.0.0.1:7001".to_string())]
            .into_iter()
            .collect();
        let line = voters(&dd, NodeId(1), "127.0.0.1:7001", &alone)
            .unwrap_err()
            .to_string();
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

    #[test]
    fn a_new_directory_without_peers_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::open(&StdFs, tmp.path(), "c", NodeId(1)).unwrap();
        let e = voters(&dd, NodeId(1), "127.0.0.1:1", &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().starts_with("--peers: required"), "{e}");
    }
}
