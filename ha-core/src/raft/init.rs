//! Starting a core from what storage held: stored state is checked before
//! it is trusted (a log that cannot be a Raft log is refused, never
//! repaired silently), and the term is never below the last entry's.

use super::*;

impl Raft {
    /// A node started (or restarted) from durable state.
    pub fn new(config: Config, init: InitialState) -> Result<Raft, InitError> {
        config.validate()?;
        // Empty: a node waiting to be added (its leader's entries will
        // bring its configuration).
        if !init.membership.is_empty() {
            init.membership.validate()?;
        }
        check_stored(&init)?;
        let (snap_index, snap_term) = init.snapshot_last;
        let mut log = RaftLog::restore(snap_index, snap_term, init.entries, init.hard_state.commit);
        log.set_base_conf(init.membership);
        if let Some((i, m)) = log.confs_invalid() {
            return Err(InitError::StoredState(format!(
                "the configuration stored at index {i} is not valid: {m}"
            )));
        }
        let mut rng = SplitMix64::new(config.rng_seed);
        let randomized_timeout = rng.range(
            config.election_timeout_min_ticks,
            config.election_timeout_max_ticks,
        );
        let mut hs = init.hard_state;
        // A node's term is never below the term of its last entry (or of
        // the snapshot its log starts from). A repairing node's storage may
        // have lost the hard state that said so (its log set aside, its
        // snapshot intact): it starts from that term, or it would take a
        // leader of an older term for current. With no vote: a vote is
        // durable before it is sent, so none was sent in a term the stored
        // hard state does not name (a repairing node votes in no term it
        // saw anyway).
        let last_term = log.last_term();
        if hs.term < last_term {
            hs.term = last_term;
            hs.vote = None;
        }
        let drawn = rng.next_u64();
        let repair_nonce = match init.repair_nonce {
            0 => drawn,
            n => n,
        };
        let newcomer = log.conf().1.is_empty();
        Ok(Raft {
            newcomer,
            rng,
            term: hs.term,
            vote: hs.vote,
            leader: None,
            role: Role::Follower,
            // As stored: a term raised above (repairing) is written with
            // the first Ready.
            last_hard_state: HardState {
                commit: log.committed,
                ..init.hard_state
            },
            log,
            election_elapsed: 0,
            randomized_timeout,
            heartbeat_elapsed: 0,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            last_soft_state: SoftState {
                role: RoleKind::Follower,
                leader: None,
                term: hs.term,
            },
            ready_outstanding: false,
            apply_held: false,
            installed_snapshot: None,
            snapshots_to_send: Vec::new(),
            repair: init.repairing.then_some(Repair {
                nonce: repair_nonce,
                leader_last: None,
                heard: BTreeSet::new(),
                // Query at the first tick.
                query_elapsed: u64::MAX,
                wait_ticks: None,
                done: false,
                floor: hs.term,
            }),
            // A joined node's newcomer floor, again after a restart (see
            // `InitialState::joined`); a newcomer without a configuration
            // takes it on when it gets one.
            vote_floor: if init.joined && !newcomer {
                hs.term
            } else {
                Term(0)
            },
            ticks: 0,
            clock: 0,
            durable_term: init.hard_state.term,
            lease_heard: None,
            config,
        })
    }

    // ----- observation -------------------------------------------------------
}

/// Refuses stored state that cannot be a Raft log: numbers out of range, a
/// log that does not start right after the snapshot, or one with gaps or
/// falling terms.
fn check_stored(init: &InitialState) -> Result<(), InitError> {
    let (snap_index, snap_term) = init.snapshot_last;
    let hs = init.hard_state;
    if !hs.term.is_sane()
        || !hs.commit.is_sane()
        || !snap_term.is_sane()
        || !snap_index.is_sane()
        // The term a start may raise itself to (below).
        || init.entries.last().is_some_and(|e| !e.term.is_sane())
    {
        return Err(InitError::StoredState(format!(
            "stored state is out of range (term {}, commit {}, snapshot {}@{}, last entry \
             {:?})",
            hs.term,
            hs.commit,
            snap_index,
            snap_term,
            init.entries.last().map(|e| (e.index, e.term))
        )));
    }
    if let Some(first) = init.entries.first()
        && first.index != snap_index.next()
    {
        return Err(InitError::StoredState(format!(
            "stored log starts at index {} but the snapshot ends at {}",
            first.index, snap_index
        )));
    }
    for w in init.entries.windows(2) {
        if w[1].index != w[0].index.next() || w[1].term < w[0].term {
            return Err(InitError::StoredState(format!(
                "stored log is not contiguous at index {}",
                w[1].index
            )));
        }
    }
    Ok(())
}
