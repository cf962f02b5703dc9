//! Cluster configuration and quorum arithmetic.
//!
//! Owns: which nodes vote, which only learn, and what counts as a majority.
//! The type is shaped for joint consensus (dissertation §4.3): during a change
//! the cluster runs under `C_old,new`, where every decision (election, commit)
//! needs a majority of `voters` *and* a majority of `voters_outgoing`.
//!
//! Invariants:
//! 1. `voters` is never empty in a usable configuration.
//! 2. `voters_outgoing` is empty outside a joint configuration.
//! 3. A learner is never a voter (in either half), so it never counts towards
//!    a quorum and never starts an election.
//! 4. `addrs` names members only, each address at most [`MAX_ADDR_BYTES`]
//!    of printable ASCII: where the member was said to listen when it was
//!    added (or bootstrapped), carried with the configuration so every node
//!    learns where the others are. The core never reads it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::types::{LogIndex, NodeId};

/// The most ids a configuration names (voters of both halves and
/// learners, counted with repeats): far above any real cluster, low enough
/// that quorum arithmetic over them costs nothing.
pub const MAX_MEMBERS: usize = 1024;

/// The longest member address (`HOST:PORT`) a configuration records: a DNS
/// name is at most 253 bytes, and a port and a colon fit beside it.
pub const MAX_ADDR_BYTES: usize = 261;

/// A cluster configuration: voters, the outgoing voters of a joint
/// configuration, and learners.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Membership {
    /// Nodes whose votes and acknowledgements count (`C_new` while joint).
    pub voters: BTreeSet<NodeId>,
    /// The old voter set while a joint change is in progress (`C_old`);
    /// empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Nodes that receive the log but never vote.
    pub learners: BTreeSet<NodeId>,
    /// Where members listen (`HOST:PORT`), for those whose address was
    /// given (invariant 4); a configuration from before addresses were
    /// recorded has none.
    #[serde(default)]
    pub addrs: BTreeMap<NodeId, String>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |s: &BTreeSet<NodeId>| s.iter().map(|n| n.0.to_string()).collect::<Vec<_>>();
        write!(f, "voters={:?}", ids(&self.voters))?;
        if self.is_joint() {
            write!(f, " outgoing={:?}", ids(&self.voters_outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners={:?}", ids(&self.learners))?;
        }
        if !self.addrs.is_empty() {
            let addrs: Vec<String> = self.addrs.iter().map(|(n, a)| format!("{n}={a}")).collect();
            write!(f, " addrs={addrs:?}")?;
        }
        Ok(())
    }
}

/// The outcome of counting votes so far.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer grant.
    Lost,
    /// Not decided yet.
    Pending,
}

impl Membership {
    /// A plain (non-joint) configuration of the given voters and no learners.
    pub fn new_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// The voters of either half other than `me`, each once, in id order
    /// (whom a candidate asks, a repairing node queries, a leader may hand
    /// leadership to).
    pub fn other_voters(&self, me: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.voters
            .union(&self.voters_outgoing)
            .copied()
            .filter(move |v| *v != me)
    }

    /// Every node that should receive the log: voters of both halves and learners.
    pub fn replication_targets(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.voters.union(&self.voters_outgoing).copied().collect();
        all.extend(self.learners.iter().copied());
        all
    }

    /// Number of distinct members (voters and learners).
    pub fn len(&self) -> usize {
        self.replication_targets().len()
    }

    /// Whether the configuration has no members at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that there is at least one voter, that no node is both a
    /// voter and a learner, that no id is 0, and that it names at most
    /// [`MAX_MEMBERS`] nodes.
    pub fn validate(&self) -> Result<(), super::InitError> {
        if self.voters.is_empty() {
            return Err(super::InitError::Membership(
                "a configuration needs at least one voter".into(),
            ));
        }
        let named = self.voters.len() + self.voters_outgoing.len() + self.learners.len();
        if named > MAX_MEMBERS {
            return Err(super::InitError::Membership(format!(
                "a configuration of {named} ids (at most {MAX_MEMBERS})"
            )));
        }
        if self.replication_targets().contains(&NodeId(0)) {
            return Err(super::InitError::Membership(
                "node id 0 is not a node id".into(),
            ));
        }
        if let Some(l) = self.learners.iter().find(|l| self.is_voter(**l)) {
            return Err(super::InitError::Membership(format!(
                "node {l} is both a voter and a learner"
            )));
        }
        for (id, addr) in &self.addrs {
            if !self.is_member(*id) {
                return Err(super::InitError::Membership(format!(
                    "an address for node {id}, which is not a member"
                )));
            }
            if let Err(why) = check_addr(addr) {
                return Err(super::InitError::Membership(format!(
                    "node {id}'s address: {why}"
                )));
            }
        }
        Ok(())
    }

    /// The configuration without the addresses (what quorums are made of).
    pub fn without_addrs(&self) -> Membership {
        Membership {
            addrs: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// Appends the stored form of this configuration to `out`, the one the
    /// log's configuration entries and snapshot headers hold: three id sets
    /// (a little-endian u32 count, then each id as a u64), then zero or
    /// more sections, each a tag byte, a u32 length and its bytes. Section
    /// 1 holds the addresses: a u32 count, then each id (u64), the
    /// address's length (u16) and its bytes. Fails if a set or an address
    /// is too large for its count (never for a validated configuration).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        for set in [&self.voters, &self.voters_outgoing, &self.learners] {
            let n = u32::try_from(set.len())
                .map_err(|_| format!("a membership set of {} ids", set.len()))?;
            out.extend_from_slice(&n.to_le_bytes());
            for id in set {
                out.extend_from_slice(&id.0.to_le_bytes());
            }
        }
        if self.addrs.is_empty() {
            return Ok(());
        }
        let mut section = Vec::new();
        section.extend_from_slice(&(self.addrs.len() as u32).to_le_bytes());
        for (id, addr) in &self.addrs {
            let len = u16::try_from(addr.len())
                .map_err(|_| format!("an address of {} bytes", addr.len()))?;
            section.extend_from_slice(&id.0.to_le_bytes());
            section.extend_from_slice(&len.to_le_bytes());
            section.extend_from_slice(addr.as_bytes());
        }
        let len = u32::try_from(section.len()).map_err(|_| "addresses too large".to_string())?;
        out.push(SECTION_ADDRS);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&section);
        Ok(())
    }

    /// Decodes [`Membership::encode_into`]'s form, all of `b`: counts are
    /// checked against the bytes present before anything is allocated for
    /// them, and an unknown section is refused (a newer version wrote it).
    /// What the ids and addresses say is checked by
    /// [`Membership::validate`], where the configuration is used (a stored
    /// one that fails it refuses the node's start, not its log's scan).
    pub fn decode(b: &[u8]) -> Result<Membership, String> {
        let mut r = Reader { b, at: 0 };
        let mut m = Membership::default();
        for k in 0..3 {
            let n = r.u32()? as usize;
            if n > MAX_MEMBERS {
                return Err(format!(
                    "a membership set of {n} ids (at most {MAX_MEMBERS})"
                ));
            }
            for _ in 0..n {
                let id = NodeId(r.u64()?);
                [&mut m.voters, &mut m.voters_outgoing, &mut m.learners][k].insert(id);
            }
        }
        let mut seen_addrs = false;
        while r.at < b.len() {
            let tag = r.take(1)?[0];
            let len = r.u32()? as usize;
            let body = r.take(len)?;
            match tag {
                SECTION_ADDRS if !seen_addrs => {
                    seen_addrs = true;
                    let mut s = Reader { b: body, at: 0 };
                    let n = s.u32()? as usize;
                    if n > MAX_MEMBERS {
                        return Err(format!("{n} addresses (at most {MAX_MEMBERS})"));
                    }
                    for _ in 0..n {
                        let id = NodeId(s.u64()?);
                        let len = usize::from(u16::from_le_bytes(
                            s.take(2)?.try_into().expect("2 bytes"),
                        ));
                        let addr = std::str::from_utf8(s.take(len)?)
                            .map_err(|_| format!("node {id}'s address is not UTF-8"))?;
                        if m.addrs.insert(id, addr.to_string()).is_some() {
                            return Err(format!("node {id}'s address is given twice"));
                        }
                    }
                    if s.at != body.len() {
                        return Err("the address section has trailing bytes".into());
                    }
                }
                t => return Err(format!("unknown membership section {t}")),
            }
        }
        Ok(m)
    }

    /// The highest index acknowledged by a quorum, given each node's match index.
    /// Under joint consensus it is the smaller of the two halves' answers.
    pub fn committed_index(&self, match_of: impl Fn(NodeId) -> LogIndex) -> LogIndex {
        let incoming = majority_index(&self.voters, &match_of);
        if self.is_joint() {
            incoming.min(majority_index(&self.voters_outgoing, &match_of))
        } else {
            incoming
        }
    }

    /// Counts votes: `votes[n]` is true for a grant and false for a rejection.
    pub fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        let incoming = half_vote_result(&self.voters, votes);
        if !self.is_joint() {
            return incoming;
        }
        let outgoing = half_vote_result(&self.voters_outgoing, votes);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Whether the nodes for which `active` holds form a quorum.
    pub fn has_quorum(&self, active: impl Fn(NodeId) -> bool) -> bool {
        let votes: BTreeMap<NodeId, bool> = self
            .voters
            .union(&self.voters_outgoing)
            .map(|n| (*n, active(*n)))
            .collect();
        self.vote_result(&votes) == VoteResult::Won
    }
}

/// The tag of the address section (see [`Membership::encode_into`]).
const SECTION_ADDRS: u8 = 1;

/// Why `addr` is not an address a configuration records, if it is not:
/// empty, longer than [`MAX_ADDR_BYTES`], not printable ASCII, without a
/// `:PORT` (1 to 65535), an IPv6 address without brackets, or an address
/// no one can be reached at (`0.0.0.0`, `[::]`: a node listening on every
/// interface is reached at one of them, which is what to record).
pub fn check_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty() || addr.len() > MAX_ADDR_BYTES {
        return Err(format!(
            "an address of {} bytes (1 to {MAX_ADDR_BYTES})",
            addr.len()
        ));
    }
    if !addr.bytes().all(|c| c.is_ascii_graphic()) {
        return Err("an address must be printable ASCII without spaces".into());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not HOST:PORT"));
    };
    if host.is_empty() || !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return Err(format!("{addr:?} is not HOST:PORT (PORT from 1 to 65535)"));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.contains(':') && bare.len() == host.len() {
        return Err(format!(
            "{addr:?}: write an IPv6 address in brackets, [ADDR]:PORT"
        ));
    }
    if bare.len() != host.len() && bare.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!("{addr:?}: only an IPv6 address goes in brackets"));
    }
    if bare
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(format!(
            "{addr:?} names no one (an unspecified address): give the address others reach it at"
        ));
    }
    Ok(())
}

/// A cursor over stored bytes: every read is checked against what is there.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or("the configuration is cut short")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

fn majority_index(voters: &BTreeSet<NodeId>, match_of: &impl Fn(NodeId) -> LogIndex) -> LogIndex {
    if voters.is_empty() {
        // An empty half places no constraint (only reachable for the outgoing
        // half, which is empty outside joint consensus).
        return LogIndex(u64::MAX);
    }
    let mut matched: Vec<LogIndex> = voters.iter().map(|n| match_of(*n)).collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    // With n voters, the (n/2 + 1)-th highest match index is held by a majority.
    matched[voters.len() / 2]
}

fn half_vote_result(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let quorum = voters.len() / 2 + 1;
    let granted = voters
        .iter()
        .filter(|n| votes.get(n) == Some(&true))
        .count();
    let rejected = voters
        .iter()
        .filter(|n| votes.get(n) == Some(&false))
        .count();
    if granted >= quorum {
        VoteResult::Won
    } else if voters.len() - rejected < quorum {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|n| NodeId(*n)).collect()
    }

    #[test]
    fn committed_index_is_the_majority_match() {
        let table: &[(&[u64], &[u64], u64)] = &[
            (&[1], &[7], 7),
            (&[1, 2, 3], &[5, 3, 9], 5),
            (&[1, 2, 3], &[0, 0, 9], 0),
            (&[1, 2, 3, 4], &[4, 3, 2, 1], 2),
            (&[1, 2, 3, 4, 5], &[10, 1, 1, 10, 10], 10),
            (&[1, 2, 3, 4, 5], &[10, 1, 1, 2, 10], 2),
        ];
        for (voters, matches, want) in table {
            let m = Membership::new_voters(voters.iter().map(|n| NodeId(*n)));
            let got = m.committed_index(|n| LogIndex(matches[(n.0 - 1) as usize]));
            assert_eq!(
                got,
                LogIndex(*want),
                "voters {voters:?} matches {matches:?}"
            );
        }
    }

    #[test]
    fn joint_commit_needs_both_halves() {
        let m = Membership {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: ids(&[3, 4, 5]),
            learners: BTreeSet::new(),
            addrs: BTreeMap::new(),
        };
        // New half at 9 (1, 2 at 9), old half only 3 and 4 at ... 3 has 9, 4 has 2, 5 has 1.
        let matches = [9, 9, 9, 2, 1];
        let got = m.committed_index(|n| LogIndex(matches[(n.0 - 1) as usize]));
        assert_eq!(got, LogIndex(2));
    }

    #[test]
    fn vote_counting_decides_as_soon_as_it_can() {
        let m = Membership::new_voters(ids(&[1, 2, 3, 4, 5]));
        let mut votes = BTreeMap::new();
        votes.insert(NodeId(1), true);
        votes.insert(NodeId(2), true);
        assert_eq!(m.vote_result(&votes), VoteResult::Pending);
        votes.insert(NodeId(3), true);
        assert_eq!(m.vote_result(&votes), VoteResult::Won);
        let mut votes = BTreeMap::new();
        for n in [1, 2, 3] {
            votes.insert(NodeId(n), false);
        }
        assert_eq!(m.vote_result(&votes), VoteResult::Lost);
    }

    #[test]
    fn joint_vote_needs_both_halves() {
        let m = Membership {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: ids(&[4, 5, 6]),
            learners: BTreeSet::new(),
            addrs: BTreeMap::new(),
        };
        let votes: BTreeMap<_, _> = [1, 2, 4].iter().map(|n| (NodeId(*n), true)).collect();
        assert_eq!(m.vote_result(&votes), VoteResult::Pending);
        let votes: BTreeMap<_, _> = [1, 2, 4, 5].iter().map(|n| (NodeId(*n), true)).collect();
        assert_eq!(m.vote_result(&votes), VoteResult::Won);
    }

    #[test]
    fn validate_rejects_learner_voters_and_empty() {
        assert!(Membership::default().validate().is_err());
        let mut m = Membership::new_voters(ids(&[1, 2]));
        m.learners.insert(NodeId(2));
        assert!(m.validate().is_err());
        m.learners = ids(&[3]);
        assert!(m.validate().is_ok());
        assert!(!m.is_voter(NodeId(3)));
        assert_eq!(m.len(), 3);
        m.addrs.insert(NodeId(4), "h:1".into());
        assert!(m.validate().is_err(), "an address of a non-member");
        m.addrs.clear();
        for bad in [
            "",
            "h",
            "h:",
            ":1",
            "h:99999",
            "h:0",
            "h :1",
            "h\n:1",
            "::1:7000",
            "0.0.0.0:7000",
            "[::]:7000",
            "[host]:7000",
        ] {
            m.addrs.insert(NodeId(3), bad.into());
            assert!(m.validate().is_err(), "{bad:?}");
        }
        m.addrs
            .insert(NodeId(3), "x".repeat(MAX_ADDR_BYTES - 1) + ":1");
        assert!(m.validate().is_err(), "too long");
        m.addrs
            .insert(NodeId(3), "node-3.kv.default.svc:7000".into());
        m.addrs.insert(NodeId(1), "[::1]:7000".into());
        assert!(m.validate().is_ok());
        m.addrs.insert(NodeId(1), "10.0.0.1:7000".into());
        assert!(m.validate().is_ok());
    }

    #[test]
    fn the_stored_form_round_trips_and_refuses_damage() {
        let mut m = Membership {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: ids(&[1, 2, 4]),
            learners: ids(&[5]),
            addrs: BTreeMap::new(),
        };
        let mut plain = Vec::new();
        m.encode_into(&mut plain).unwrap();
        // The form written before addresses existed reads the same.
        assert_eq!(plain.len(), 3 * 4 + 7 * 8);
        assert_eq!(Membership::decode(&plain).unwrap(), m);
        m.addrs.insert(NodeId(1), "10.0.0.1:7000".into());
        m.addrs.insert(NodeId(5), "kv-5.kv:7000".into());
        let mut b = Vec::new();
        m.encode_into(&mut b).unwrap();
        assert_eq!(Membership::decode(&b).unwrap(), m);
        // Every cut is refused, never misread or panicked on.
        for n in 0..b.len() {
            if n != plain.len() {
                assert!(Membership::decode(&b[..n]).is_err(), "cut at {n}");
            }
        }
        // One address section at most.
        let mut twice = b.clone();
        twice.extend_from_slice(&b[plain.len()..]);
        assert!(Membership::decode(&twice).is_err());
        let mut unknown = plain.clone();
        unknown.extend_from_slice(&[9, 0, 0, 0, 0]);
        assert!(
            Membership::decode(&unknown)
                .unwrap_err()
                .contains("unknown")
        );
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Membership::decode(&huge).is_err());
        // Bytes that are not UTF-8 in an address are refused.
        let mut bad = b.clone();
        let at = bad.len() - 1;
        bad[at] = 0xff;
        assert!(Membership::decode(&bad).unwrap_err().contains("UTF-8"));
    }
}
