//! Leadership transfer on a real 3-node QUIC cluster, through the node
//! handle and the typed client: to a named voter, to the most up-to-date
//! one, to a node that is down (abandoned, the leader goes on), and the
//! refusals.

use ha_core::node::NodeError;
use ha_core::raft::{RoleKind, TransferError};
use ha_core::types::NodeId;
use ha_core::{Replicated, replicated};
use ha_quic::LocalCluster;
use serde::{Deserialize, Serialize};

/// A replicated tally.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Tally {
    value: u64,
}

#[replicated]
impl Tally {
    /// Adds `n`; returns the new value.
    pub fn add(&mut self, n: u64) -> u64 {
        self.value += n;
        self.value
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_where_asked_and_writes_go_on() {
    let cluster = LocalCluster::<Tally>::start(3)
        .await
        .expect("cluster starts");
    let client = cluster.client();
    assert_eq!(client.add(1).await.unwrap(), 1);
    let first = cluster.leader().await.expect("a leader");

    // Through the typed client, to a named voter.
    let target = first % 3 + 1;
    assert_eq!(
        client.inner().transfer_leader(Some(target)).await.unwrap(),
        target
    );
    assert_eq!(cluster.status(target).unwrap().role, RoleKind::Leader);
    assert_eq!(client.add(1).await.unwrap(), 2);
    // Asked again: it leads already, nothing moves.
    let term = cluster.status(target).unwrap().term;
    assert_eq!(
        client.inner().transfer_leader(Some(target)).await.unwrap(),
        target
    );
    assert_eq!(cluster.status(target).unwrap().term, term);

    // Through the node handle, to the most up-to-date voter.
    let h = cluster.handle(target).unwrap();
    let next = h.transfer_leadership(None).await.unwrap();
    assert_ne!(next.0, target);
    assert_eq!(cluster.status(next.0).unwrap().role, RoleKind::Leader);
    assert_eq!(cluster.status(target).unwrap().role, RoleKind::Follower);
    assert_eq!(client.add(1).await.unwrap(), 3);

    // Refusals: not another voter; not the leader.
    let h = cluster.handle(next.0).unwrap();
    assert_eq!(
        h.transfer_leadership(Some(NodeId(9))).await,
        Err(NodeError::TransferRefused(TransferError::NotAVoter(
            NodeId(9)
        )))
    );
    assert_eq!(
        h.transfer_leadership(Some(next)).await,
        Err(NodeError::TransferRefused(TransferError::NotAVoter(next)))
    );
    let follower = cluster.handle(target).unwrap();
    assert_eq!(
        follower.transfer_leadership(None).await,
        Err(NodeError::NotLeader { leader: Some(next) })
    );
    let refused = client.inner().transfer_leader(Some(9)).await.unwrap_err();
    assert!(refused.is_not_applied(), "{refused}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_node_that_is_down_is_abandoned_and_the_leader_goes_on() {
    let mut cluster = LocalCluster::<Tally>::start(3)
        .await
        .expect("cluster starts");
    let client = cluster.client();
    assert_eq!(client.add(1).await.unwrap(), 1);
    let leader = cluster.leader().await.expect("a leader");
    let down = leader % 3 + 1;
    cluster.kill(down).await;
    let h = cluster.handle(leader).unwrap();
    assert_eq!(
        h.transfer_leadership(Some(NodeId(down))).await,
        Err(NodeError::TransferFailed {
            to: NodeId(down),
            leader: Some(NodeId(leader))
        })
    );
    let s = cluster.status(leader).unwrap();
    assert_eq!(s.role, RoleKind::Leader, "{s:?}");
    // Proposals are taken again.
    assert_eq!(client.add(1).await.unwrap(), 2);
    cluster.shutdown().await;
}
