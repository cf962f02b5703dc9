//! The client's membership calls against scripted answers: what each
//! sequence of answers comes to (done, busy, not applied, unknown), never
//! "not applied" once an attempt may have started the change.

use super::*;
use ha_core::client::{ClientTransport, RequestError, RequestFuture};
use ha_core::protocol::{ClientRequest, ClientResponse};
use ha_core::raft::{ConfChange, ConfChangeError, Membership};
use ha_core::types::NodeId;
use std::sync::Mutex;

/// Answers each request with the next scripted answer (the last one
/// again once the script runs out), and records the requests.
struct Script {
    answers: Mutex<Vec<Result<ClientResponse, RequestError>>>,
    asked: Mutex<Vec<ClientRequest>>,
    dialed: Mutex<Vec<String>>,
}

impl ClientTransport for Script {
    fn request(&self, addr: ha_core::client::NodeAddr, req: ClientRequest) -> RequestFuture<'_> {
        self.asked.lock().unwrap().push(req);
        self.dialed.lock().unwrap().push(addr.to_string());
        let mut a = self.answers.lock().unwrap();
        let next = if a.len() > 1 {
            a.remove(0)
        } else {
            a[0].clone()
        };
        Box::pin(async move { next })
    }
}

fn client(
    answers: Vec<Result<ClientResponse, RequestError>>,
) -> (std::sync::Arc<Script>, ha_core::Client<Counter>) {
    let s = std::sync::Arc::new(Script {
        answers: Mutex::new(answers),
        asked: Mutex::new(Vec::new()),
        dialed: Mutex::new(Vec::new()),
    });
    let c = ha_core::Client::new(
        s.clone(),
        vec!["127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap()],
        ha_core::ClientOptions {
            timeout: std::time::Duration::from_millis(2500),
            attempt_timeout: std::time::Duration::from_millis(100),
            ..ha_core::ClientOptions::default()
        },
    );
    (s, c)
}

fn refused(reason: ConfChangeError) -> Result<ClientResponse, RequestError> {
    Ok(ClientResponse::ChangeRefused { reason })
}

fn members(voters: &[u64], learners: &[u64]) -> Result<ClientResponse, RequestError> {
    let mut m = Membership::new_voters(voters.iter().map(|n| NodeId(*n)));
    m.learners = learners.iter().map(|n| NodeId(*n)).collect();
    m.addrs.insert(NodeId(voters[0]), "10.0.0.1:7000".into());
    Ok(ClientResponse::Members {
        membership: m,
        leader: voters[0],
    })
}

#[tokio::test]
async fn another_change_in_progress_is_busy_after_a_grace() {
    let (_, c) = client(vec![refused(ConfChangeError::InProgress)]);
    let started = std::time::Instant::now();
    let e = c.member_remove(2).await.unwrap_err();
    assert!(matches!(e, ha_core::Error::Busy(_)), "{e:?}");
    assert!(e.is_not_applied());
    assert!(started.elapsed() >= ha_core::client::BUSY_GRACE);
}

#[tokio::test]
async fn after_a_lost_answer_in_progress_may_be_our_own_change() {
    let (_, c) = client(vec![
        Err(RequestError::Lost("gone".into())),
        refused(ConfChangeError::InProgress),
    ]);
    let e = c.member_remove(2).await.unwrap_err();
    assert!(e.is_unknown(), "{e:?}");
    // The same after a leader that lost leadership mid-change.
    let (_, c) = client(vec![
        Ok(ClientResponse::Failed {
            not_applied: false,
            message: "leadership moved after the change started".into(),
        }),
        refused(ConfChangeError::InProgress),
    ]);
    let e = c.member_remove(2).await.unwrap_err();
    assert!(e.is_unknown(), "{e:?}");
    // And a retry that finds the change done is done.
    let (_, c) = client(vec![
        Err(RequestError::Lost("gone".into())),
        members(&[1, 3], &[]),
    ]);
    let m = c.member_remove(2).await.unwrap();
    assert!(m.get(2).is_none());
    assert_eq!(m.leader, 1);
    assert_eq!(m.get(1).unwrap().addr.as_deref(), Some("10.0.0.1:7000"));
}

#[tokio::test]
async fn a_refusal_for_good_is_not_applied_and_a_stranger_is_refused_at_once() {
    let (s, c) = client(vec![refused(ConfChangeError::NotALearner(NodeId(9)))]);
    let e = c.member_promote(9).await.unwrap_err();
    assert!(matches!(e, ha_core::Error::NotApplied(_)), "{e:?}");
    assert_eq!(s.asked.lock().unwrap().len(), 1, "not retried");
}

#[tokio::test]
async fn add_waits_for_the_learner_to_catch_up_then_promotes() {
    let lag = ConfChangeError::NotCaughtUp {
        id: NodeId(4),
        lag: Some(5000),
    };
    let (s, c) = client(vec![
        members(&[1, 2, 3], &[4]),
        refused(lag.clone()),
        refused(lag),
        members(&[1, 2, 3, 4], &[]),
    ]);
    let m = c.member_add(4, "kv-4.kv:7000", false).await.unwrap();
    assert_eq!(m.get(4).unwrap().role, ha_core::MemberRole::Voter);
    let asked = s.asked.lock().unwrap();
    assert_eq!(
        asked[0],
        ClientRequest::ChangeMembership {
            change: ConfChange::AddLearner(NodeId(4), Some("kv-4.kv:7000".into()))
        }
    );
    assert_eq!(
        asked[3],
        ClientRequest::ChangeMembership {
            change: ConfChange::Promote(NodeId(4))
        }
    );
}

#[tokio::test]
async fn a_learner_added_but_not_promoted_is_not_called_not_applied() {
    let (_, c) = client(vec![
        members(&[1, 2, 3], &[4]),
        refused(ConfChangeError::NotCaughtUp {
            id: NodeId(4),
            lag: None,
        }),
    ]);
    let e = c.member_add(4, "kv-4.kv:7000", false).await.unwrap_err();
    assert!(e.is_unknown(), "{e:?}");
    assert!(e.to_string().contains("added as a learner"), "{e}");
    // A retry of a call whose promotion completed: done, not refused.
    let (_, c) = client(vec![
        refused(ConfChangeError::AlreadyVoter(NodeId(4))),
        Ok(ClientResponse::Members {
            membership: {
                let mut m = Membership::new_voters([1, 2, 3, 4].map(NodeId));
                m.addrs.insert(NodeId(4), "kv-4.kv:7000".into());
                m
            },
            leader: 1,
        }),
    ]);
    let m = c.member_add(4, "kv-4.kv:7000", false).await.unwrap();
    assert_eq!(m.get(4).unwrap().role, ha_core::MemberRole::Voter);
    // With --learner it is done once added.
    let (_, c) = client(vec![members(&[1, 2, 3], &[4])]);
    let m = c.member_add(4, "kv-4.kv:7000", true).await.unwrap();
    assert_eq!(m.get(4).unwrap().role, ha_core::MemberRole::Learner);
}

/// A redirect names the leader by its configured `HOST:PORT`, which the
/// client dials next (one that is not a valid address is ignored); the
/// members' addresses in an answer replace the ones learned before and
/// are tried in turn with the ones the client was given.
#[tokio::test]
async fn redirects_and_member_lists_teach_the_client_addresses() {
    let mut m = Membership::new_voters([NodeId(4), NodeId(5)]);
    m.addrs.insert(NodeId(4), "db-4.test:7000".into());
    m.addrs.insert(NodeId(5), "10.0.0.5:7000".into());
    let (s, c) = client(vec![
        Ok(ClientResponse::NotLeader {
            leader: Some(2),
            leader_addr: Some("db-2.test:7000".into()),
        }),
        Ok(ClientResponse::NotLeader {
            leader: Some(3),
            leader_addr: Some("0.0.0.0:7000".into()),
        }),
        Ok(ClientResponse::Members {
            membership: m,
            leader: 4,
        }),
        Err(RequestError::NotSent("down".into())),
    ]);
    c.members().await.unwrap();
    let dialed = s.dialed.lock().unwrap().clone();
    assert_eq!(dialed[..2], ["127.0.0.1:1", "db-2.test:7000"], "{dialed:?}");
    assert!(
        ["127.0.0.1:1", "db-2.test:7000"].contains(&dialed[2].as_str()),
        "{dialed:?}"
    );
    // Every node down now: the client tries what it was given and what
    // the member list named, not the redirect learned before it.
    // (First the node that answered last, taken as the leader.)
    s.dialed.lock().unwrap().clear();
    c.members().await.unwrap_err();
    let again = s.dialed.lock().unwrap().clone();
    assert_eq!(again[0], dialed[2]);
    let tried: std::collections::BTreeSet<String> = again[1..].iter().cloned().collect();
    let expect: std::collections::BTreeSet<String> =
        ["127.0.0.1:1", "db-4.test:7000", "10.0.0.5:7000"]
            .map(String::from)
            .into();
    assert_eq!(tried, expect);
    // Unreachable for a while, they are still tried: a blip does not
    // leave the client with only the addresses it started from.
    s.dialed.lock().unwrap().clear();
    c.members().await.unwrap_err();
    let last: std::collections::BTreeSet<String> =
        s.dialed.lock().unwrap().iter().cloned().collect();
    assert_eq!(last, expect);
}

/// Answers by address: node 1 names the dead node 9 leader three times
/// (it has not noticed yet), then no leader twice (an election), then
/// node 3; node 9 never answers; node 3 answers the member list.
struct Failover {
    dialed: Mutex<Vec<String>>,
    asked_1: Mutex<u32>,
}

impl ClientTransport for Failover {
    fn request(&self, addr: ha_core::client::NodeAddr, _req: ClientRequest) -> RequestFuture<'_> {
        self.dialed.lock().unwrap().push(addr.to_string());
        let answer = match addr.as_str() {
            "127.0.0.1:1" => {
                let mut n = self.asked_1.lock().unwrap();
                *n += 1;
                let leader_addr = match *n {
                    1..=3 => Some("127.0.0.1:9".to_string()),
                    4 | 5 => None,
                    _ => Some("127.0.0.1:3".to_string()),
                };
                Ok(ClientResponse::NotLeader {
                    leader: None,
                    leader_addr,
                })
            }
            "127.0.0.1:3" => members(&[3, 1], &[]),
            _ => Err(RequestError::NotSent("no handshake".into())),
        };
        Box::pin(async move { answer })
    }
}

// Paused time: the waits between attempts pass in order, not by the clock.
#[tokio::test(start_paused = true)]
async fn a_node_that_failed_is_not_followed_again_while_others_still_name_it() {
    let t = std::sync::Arc::new(Failover {
        dialed: Mutex::new(Vec::new()),
        asked_1: Mutex::new(0),
    });
    let c: ha_core::Client<Counter> = ha_core::Client::new(
        t.clone(),
        vec!["127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap()],
        ha_core::ClientOptions {
            timeout: std::time::Duration::from_secs(5),
            attempt_timeout: std::time::Duration::from_millis(100),
            ..ha_core::ClientOptions::default()
        },
    );
    let m = c.members().await.expect("the new leader answers");
    assert_eq!(m.leader, 3);
    let dialed = t.dialed.lock().unwrap().clone();
    // Node 9 failed once; the two redirects to it that followed were not
    // taken (the whole call takes well under the memory of a failure).
    assert_eq!(
        dialed.iter().filter(|a| *a == "127.0.0.1:9").count(),
        1,
        "{dialed:?}"
    );
    assert_eq!(
        dialed.last().map(String::as_str),
        Some("127.0.0.1:3"),
        "{dialed:?}"
    );
}
