//! Driving the nodes: one tick of the whole cluster, each node's Readies
//! through its pipeline (persist, then apply, with seeded delays and
//! faults), and the checks after each.

use super::*;

impl Sim {
    /// The configuration node `k` was bootstrapped with: the first voters,
    /// or none for a spare (it waits to be added).
    pub(super) fn bootstrap_membership(&self, k: usize) -> Membership {
        if k < self.cfg.nodes {
            Membership::new_voters((1..=self.cfg.nodes as u64).map(NodeId))
        } else {
            Membership::default()
        }
    }

    pub(super) fn boot(&mut self, k: usize) -> Result<(), String> {
        let membership = self.bootstrap_membership(k);
        let node = &mut self.nodes[k];
        let (stored, repaired, repairing) = node
            .store
            .open(self.cfg.bug)
            .map_err(|e| format!("node {} cannot reopen its log: {e}", node.id))?;
        node.check_promise(&stored, repairing)?;
        if repaired {
            self.stats.torn_tails_repaired += 1;
        }
        if repairing {
            self.stats.repairs += 1;
        }
        let mut config = self.cfg.raft.clone();
        config.id = node.id;
        config.rng_seed = self.seed ^ (node.id.0 << 48) ^ (node.incarnation << 32);
        config.planted_bug = self.cfg.bug;
        let mut init = InitialState {
            hard_state: stored.hard_state,
            membership,
            snapshot_last: stored.snapshot_last,
            entries: stored.entries,
            repairing,
            // From the seeded generator, whose seed differs per incarnation.
            repair_nonce: 0,
            // A spare started in no configuration: it joined.
            joined: k >= self.cfg.nodes,
        };
        node.applied.clear();
        let published = node.snapshot.as_ref().map_or(LogIndex(0), |s| s.index);
        if init.snapshot_last.0 > published {
            // What `recover` refuses: the log was compacted or an install
            // recorded against a snapshot that is not there.
            return Err(format!(
                "node {}: the log starts after a snapshot at {} but the newest snapshot is at {}",
                node.id, init.snapshot_last.0, published
            ));
        }
        if let Some(snap) = &node.snapshot {
            if let Some(keep) = merge_snapshot(&mut init, snap.index, snap.term) {
                node.store
                    .install_snapshot(snap.index, snap.term, keep)
                    .and_then(|_| node.store.persist(&[], None, false, false))
                    .map_err(|e| format!("node {} cannot record its snapshot: {e}", node.id))?;
                node.promise = node
                    .promise
                    .after(Some((snap.index, snap.term, keep)), &[], None);
            }
            node.applied = snap.state.clone();
            // As the node does: a snapshot naming no configuration (taken
            // before the first configuration entry) keeps the bootstrap one.
            if !snap.membership.is_empty() {
                init.membership = snap.membership.clone();
            }
        }
        let raft = Raft::new(config, init)
            .map_err(|e| format!("node {} cannot start from its log: {e}", node.id))?;
        node.checked_commit = raft.commit_index();
        node.pipeline = Pipeline::new(raft.applied_index());
        node.raft = Some(raft);
        node.read_floors.clear();
        node.restart_at = None;
        Ok(())
    }

    pub(super) fn step_tick(&mut self) -> Result<(), String> {
        self.now += 1;
        self.stats.ticks += 1;
        self.random_faults();
        // Deliver everything due, in random order among equals.
        let now = self.now;
        let mut due: Vec<Packet> = Vec::new();
        let mut k = 0;
        while k < self.net.len() {
            // What reaches a stalled process waits in its socket buffer.
            let to = (self.net[k].msg.to.0 - 1) as usize;
            if self.net[k].deliver_at <= now && !self.is_paused(to) {
                due.push(self.net.swap_remove(k));
            } else {
                k += 1;
            }
        }
        due.sort_by_key(|p| (p.deliver_at, p.seq));
        let len = due.len();
        for i in 0..len {
            let j = i + self.rng.range(0, (len - i) as u64) as usize;
            due.swap(i, j);
        }
        for p in due {
            self.deliver(p.msg)?;
        }
        self.end_transfers()?;
        for k in 0..self.nodes.len() {
            if !self.is_paused(k)
                && self.nodes[k]
                    .saving
                    .as_ref()
                    .is_some_and(|(due, _)| *due <= now)
            {
                let (_, snap) = self.nodes[k].saving.take().expect("checked");
                self.snapshot_saved(k, snap);
                self.release_apply(k)?;
            }
        }
        for k in self.shuffled_nodes() {
            if !self.is_paused(k)
                && self.nodes[k]
                    .in_flight
                    .as_ref()
                    .is_some_and(|(due, _)| *due <= now)
            {
                let (_, f) = self.nodes[k].in_flight.take().expect("checked");
                self.complete(k, f)?;
                self.drive(k)?;
            }
        }
        for k in self.shuffled_nodes() {
            if self.is_paused(k) {
                continue;
            }
            self.sync_clock(k);
            let writing = self.nodes[k].in_flight.is_some();
            if let Some(r) = self.nodes[k].raft.as_mut() {
                r.tick();
                // As the node task does while a write is slow: what rests
                // on nothing durable goes now.
                let early = if writing {
                    r.take_messages()
                } else {
                    Vec::new()
                };
                for m in early {
                    self.send(m);
                }
                self.drive(k)?;
                // As the node task does: the core's repair is complete and
                // all it wrote is durable, so the log drops its repairing
                // mark, and then the core ends its repair.
                let node = &mut self.nodes[k];
                let settled =
                    node.raft.as_mut().is_some_and(|r| {
                        r.repair_complete() && !r.apply_held() && !r.prepare_ready()
                    }) && node.in_flight.is_none()
                        && !node.pipeline.busy();
                if settled {
                    node.store.finish_repair()?;
                    if let Some(r) = node.raft.as_mut() {
                        r.end_repair();
                    }
                }
            }
        }
        self.random_clients();
        let (due, later): (Vec<_>, Vec<_>) =
            self.probe_reads.drain(..).partition(|(t, _)| *t <= now);
        self.probe_reads = later;
        for (_, id) in due {
            self.start_read(id);
        }
        let resumed: Vec<usize> = self
            .paused
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in resumed {
            self.paused.remove(&k);
            let id = self.nodes[k].id;
            self.trace.push(now, TraceEvent::Pause(id, None));
            // The moment a stalled leader is most dangerous: it still
            // thinks it leads, and nothing told it otherwise yet.
            self.start_read(id);
        }
        for k in 0..self.nodes.len() {
            if self.nodes[k].restart_at.is_some_and(|t| t <= now) {
                let id = self.nodes[k].id;
                self.restart(id);
                self.drive(k)?;
                if self.cfg.raft.lease.is_some()
                    && !self.converging
                    && self.nodes[k].raft.is_some()
                    && self.rng.chance(0.5)
                {
                    self.campaign_past_a_restart(id);
                }
            }
        }
        self.check_one_change()
    }

    /// Runs `f` with node `k`'s core, pipeline and a [`SimIo`] over the
    /// simulator's state; then sends what it sent and records what it
    /// found. Returns `None` if the node is down.
    pub(super) fn with_pipeline<T>(
        &mut self,
        k: usize,
        restore: Option<BTreeMap<LogIndex, u64>>,
        f: impl FnOnce(&mut Raft, &mut Pipeline<u64, u64>, &mut SimIo<'_>) -> T,
    ) -> Option<(T, SimOutputs)> {
        let Sim {
            nodes,
            checker,
            acked,
            stats,
            max_acked_index,
            served_reads,
            ..
        } = self;
        let SimNode {
            id,
            raft,
            pipeline,
            applied,
            read_floors,
            ..
        } = &mut nodes[k];
        let raft = raft.as_mut()?;
        let held = raft.apply_held();
        let mut io = SimIo {
            id: *id,
            checker,
            applied,
            read_floors,
            acked,
            stats,
            max_acked: max_acked_index,
            served_reads,
            restore,
            held,
            out: SimOutputs::default(),
        };
        let r = f(raft, pipeline, &mut io);
        Some((r, io.out))
    }

    /// Sends what a pipeline step sent; records a soft state; returns the
    /// first error.
    pub(super) fn take_outputs(&mut self, k: usize, out: SimOutputs) -> Result<(), String> {
        let id = self.nodes[k].id;
        if let Some(ss) = out.soft {
            self.trace
                .push(self.now, TraceEvent::Role(id, ss.role, ss.term));
            if ss.role == RoleKind::Leader {
                self.stats.elections += 1;
                let raft = self.nodes[k].raft.as_ref().expect("node is up");
                self.checker.on_leader(raft)?;
            }
        }
        for m in out.messages {
            self.send(m);
        }
        match out.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Takes every Ready of node `k` it may, through the node task's
    /// pipeline: sends its messages at once, and completes its persistence
    /// now or, with `max_persist_delay_ticks`, on a later tick.
    pub(super) fn drive(&mut self, k: usize) -> Result<(), String> {
        loop {
            if self.nodes[k].in_flight.is_some() {
                return Ok(()); // One Ready at a time: the next waits for this one.
            }
            let Some((started, out)) = self.with_pipeline(k, None, |raft, p, io| {
                let write = p.start(raft, io)?;
                let first_prev_term = write
                    .entries
                    .first()
                    .and_then(|e| raft.term_at(e.index.prev()))
                    .unwrap_or(Term(0));
                Some((write, first_prev_term))
            }) else {
                return Ok(());
            };
            let snapshot_requests = out.snapshot_requests.clone();
            self.take_outputs(k, out)?;
            let Some((write, first_prev_term)) = started else {
                return Ok(());
            };
            let id = self.nodes[k].id;
            let needs_write = write.hard_state.is_some() || !write.entries.is_empty();
            let f = self.cfg.faults.crash_before_persist;
            if f > 0.0 && needs_write && self.rng.chance(f) {
                self.crash_for_a_while(k);
                return Ok(());
            }
            let f = self.cfg.faults.clone();
            let torn = needs_write && f.torn_write > 0.0 && self.rng.chance(f.torn_write);
            let eio = !torn && needs_write && f.fsync_eio > 0.0 && self.rng.chance(f.fsync_eio);
            if needs_write && f.disk_full > 0.0 && self.rng.chance(f.disk_full) {
                let room = self.rng.range(0, 200);
                self.nodes[k].store.fill_disk_after(room);
            }
            for peer in &snapshot_requests {
                let node = &self.nodes[k];
                let offset = node
                    .raft
                    .as_ref()
                    .map_or(LogIndex(0), |r| r.snapshot_last().0);
                let sent = node.snapshot.clone().filter(|s| s.index >= offset);
                if let Some(snap) = sent {
                    let index = snap.index;
                    let term = self.nodes[k].raft.as_ref().map_or(Term(0), |r| r.term());
                    let install = Message {
                        from: id,
                        to: *peer,
                        term,
                        body: Body::InstallSnapshot {
                            index,
                            term: snap.term,
                            membership: snap.membership.clone(),
                        },
                    };
                    let max = self.cfg.faults.max_transfer_ticks;
                    if max > 0 {
                        // Reported when the transfer ends (see `step_tick`).
                        let due = self.now + self.rng.range(1, max + 1);
                        self.transfers.push((due, install, snap));
                        continue;
                    }
                    self.snapshot_payloads
                        .insert((id, *peer, index), snap.clone());
                    self.send(install);
                    self.nodes[k]
                        .raft
                        .as_mut()
                        .expect("up")
                        .report_snapshot(*peer, Some(index));
                } else {
                    self.nodes[k]
                        .raft
                        .as_mut()
                        .expect("up")
                        .report_snapshot(*peer, None);
                }
            }
            let f = InFlight {
                write,
                torn,
                eio,
                first_prev_term,
                persisted: false,
                install_state: None,
            };
            let delay = match self.cfg.faults.max_persist_delay_ticks {
                0 => 0,
                max => self.rng.range(0, max + 1),
            };
            if delay > 0 {
                self.nodes[k].in_flight = Some((self.now + delay, f));
                return Ok(());
            }
            self.complete(k, f)?;
            if self.nodes[k].in_flight.is_some() {
                return Ok(());
            }
        }
    }

    /// A Ready's persistence completes (write it, send what waited for the
    /// disk), then, now or with `max_apply_delay_ticks` on a later tick, its
    /// application (restore, apply, `advance`, serve reads) through the
    /// pipeline; then snapshot.
    pub(super) fn complete(&mut self, k: usize, mut f: InFlight) -> Result<(), String> {
        if self.nodes[k].raft.is_none() {
            return Ok(());
        }
        if !f.persisted {
            if !self.persist_in_flight(k, &mut f)? {
                return Ok(());
            }
            f.persisted = true;
            let delay = match self.cfg.faults.max_apply_delay_ticks {
                0 => 0,
                max => self.rng.range(0, max + 1),
            };
            if delay > 0 {
                self.nodes[k].in_flight = Some((self.now + delay, f));
                return Ok(());
            }
        }
        self.apply_in_flight(k, f)
    }

    /// The disk's part of a Ready: publish a received snapshot it installs,
    /// write its entries and hard state, and send what waited for them.
    /// `false` when the node stopped on a disk error or lost its pipeline.
    fn persist_in_flight(&mut self, k: usize, f: &mut InFlight) -> Result<bool, String> {
        let id = self.nodes[k].id;
        if let Some(inst) = f.write.install
            && !self.publish_install(k, f, inst)?
        {
            return Ok(false);
        }
        // As the node task does: a Ready that moves only the commit index
        // is not written (the commit index is volatile; see the node's
        // `persist_in_flight`).
        let stored = self.nodes[k].promise.hard_state;
        let commit_only = self.nodes[k]
            .raft
            .as_ref()
            .is_some_and(|r| f.write.hard_state_may_wait(r, stored));
        let hard_state = if commit_only {
            self.nodes[k].unwritten_hs = f.write.hard_state;
            None
        } else {
            f.write.hard_state.or(self.nodes[k].unwritten_hs.take())
        };
        let written = if commit_only {
            Ok(())
        } else {
            self.nodes[k]
                .store
                .persist(&f.write.entries, hard_state, f.torn, f.eio)
        };
        if let Err(e) = written {
            // The write failed: nothing that depends on it may leave the
            // node. It stops, and restarts later from what its disk kept
            // (after an I/O error from fsync, without a power loss: the
            // page cache still serves the lost write).
            self.trace.push(
                self.now,
                TraceEvent::Partition(format!("node {id} disk: {e}")),
            );
            self.stats.disk_errors += 1;
            self.nodes[k].unsure = Some(Unsure {
                from: f
                    .write
                    .entries
                    .first()
                    .map(|e| (e.index, f.first_prev_term)),
                replaced: f.write.install.is_some_and(|i| !i.keep_suffix),
            });
            if f.eio {
                self.stop_process_for_a_while(k);
            } else {
                self.crash_for_a_while(k);
            }
            return Ok(false);
        }
        let node = &mut self.nodes[k];
        node.promise = node.promise.after(
            f.write.install.map(|i| (i.index, i.term, i.keep_suffix)),
            &f.write.entries,
            hard_state,
        );
        self.checker
            .on_persist(id, f.first_prev_term, &f.write.entries)?;
        let Some(((), out)) = self.with_pipeline(k, None, |_, p, io| p.persisted(io)) else {
            return Ok(false);
        };
        self.take_outputs(k, out)?;
        Ok(true)
    }

    /// As the node task does: publish the staged snapshot `inst` names,
    /// then record the install in the log. `false` when the disk failed
    /// and the node stopped.
    fn publish_install(
        &mut self,
        k: usize,
        f: &mut InFlight,
        inst: ha_core::raft::SnapshotInstall,
    ) -> Result<bool, String> {
        let id = self.nodes[k].id;
        let node = &mut self.nodes[k];
        let Some(snap) = node.received.remove(&(inst.index, inst.term)) else {
            return Err(format!(
                "node {id} installed snapshot {}@{} it never received",
                inst.index, inst.term,
            ));
        };
        // Staged copies this one supersedes go (a newer one may be
        // staged and already stepped: it stays for the next Ready).
        node.received.retain(|(i, _), _| *i > inst.index);
        self.checker
            .check_snapshot_complete(id, inst.index, &snap.state)?;
        let node = &mut self.nodes[k];
        f.install_state = Some(snap.state.clone());
        // Promotion keeps a snapshot file of the same (index, term)
        // that exists already (both hold the same prefix).
        if node
            .snapshot
            .as_ref()
            .is_none_or(|cur| (cur.index, cur.term) != (inst.index, inst.term))
        {
            node.snapshot = Some(snap);
        }
        self.stats.snapshots_installed += 1;
        if let Err(e) = node
            .store
            .install_snapshot(inst.index, inst.term, inst.keep_suffix)
        {
            // A disk that failed earlier (a compaction's write):
            // the node stops and restarts from what its disk kept.
            self.trace.push(
                self.now,
                TraceEvent::Partition(format!("node {id} disk: {e}")),
            );
            self.stats.disk_errors += 1;
            self.nodes[k].unsure = Some(Unsure {
                from: None,
                replaced: !inst.keep_suffix,
            });
            self.crash_for_a_while(k);
            return Ok(false);
        }
        Ok(true)
    }

    /// The applier's part of a Ready: restore, apply, `advance`, serve
    /// reads; then check commit and maybe snapshot.
    fn apply_in_flight(&mut self, k: usize, mut f: InFlight) -> Result<(), String> {
        let restore = f.install_state.take();
        let state: Option<&[u8]> = f.write.install.map(|_| &[][..]);
        let Some((r, out)) = self.with_pipeline(k, restore, |raft, p, io| {
            let r = p.finish(raft, io, state).map_err(|e| e.to_string());
            // Invariant 3 of the pipeline: the applier's index is the core's.
            if r.is_ok() && p.applied() != raft.applied_index() {
                return Err(format!(
                    "node {}: the core counts {} applied but the state machine holds up to {}",
                    raft.id(),
                    raft.applied_index(),
                    p.applied()
                ));
            }
            r
        }) else {
            return Ok(());
        };
        self.take_outputs(k, out)?;
        r?;
        self.check_commit(k)?;
        self.maybe_snapshot(k)
    }

    /// Ends the snapshot transfers due now: the file arrives if the link and
    /// the receiver are up (the receiver then steps `InstallSnapshot`), and
    /// the sender learns whether it did.
    pub(super) fn end_transfers(&mut self) -> Result<(), String> {
        let now = self.now;
        // A stalled end takes the transfer up when it resumes.
        let stalled = |sim: &Sim, m: &Message| {
            sim.is_paused((m.from.0 - 1) as usize) || sim.is_paused((m.to.0 - 1) as usize)
        };
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transfers)
            .into_iter()
            .partition(|(at, m, _)| *at <= now && !stalled(self, m));
        self.transfers = later;
        for (_, install, snap) in due {
            let (from, to) = (install.from, install.to);
            let Body::InstallSnapshot { index, .. } = install.body else {
                continue;
            };
            let arrived = self.link_up(from, to) && self.is_up(to);
            if arrived {
                self.snapshot_payloads.insert((from, to, index), snap);
                self.deliver(install)?;
            }
            let k = (from.0 - 1) as usize;
            if let Some(r) = self.nodes[k].raft.as_mut() {
                r.report_snapshot(to, arrived.then_some(index));
                self.drive(k)?;
            }
        }
        Ok(())
    }

    /// Checks what node `k` committed since its last check, as soon as its
    /// core's commit index moves (on a step or an `advance`).
    pub(super) fn check_commit(&mut self, k: usize) -> Result<(), String> {
        let Some(raft) = self.nodes[k].raft.as_ref() else {
            return Ok(());
        };
        let old = self.nodes[k].checked_commit.min(raft.commit_index());
        let new = raft.commit_index();
        if new <= old {
            return Ok(());
        }
        self.trace
            .push(self.now, TraceEvent::Commit(self.nodes[k].id, new));
        self.nodes[k].checked_commit = new;
        let raft = self.nodes[k].raft.as_ref().expect("node is up");
        let leaders: Vec<&Raft> = self
            .nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.is_leader())
            .collect();
        self.checker.on_commit(raft, old, &leaders)
    }

    /// Takes a snapshot and compacts the log when enough was applied.
    pub(super) fn maybe_snapshot(&mut self, k: usize) -> Result<(), String> {
        let Some(every) = self.cfg.snapshot_every else {
            return Ok(());
        };
        let node = &mut self.nodes[k];
        let Some(raft) = node.raft.as_mut() else {
            return Ok(());
        };
        // As the node task does: the applier's own index (the pipeline's),
        // against the last snapshot this driver took or restored.
        if node.saving.is_some() {
            return Ok(()); // One snapshot written at a time.
        }
        let applied = node.pipeline.applied();
        let last = node.snapshot.as_ref().map_or(LogIndex(0), |s| s.index);
        if applied.0 < last.0 + every {
            return Ok(());
        }
        let Some(term) = raft.term_at(applied) else {
            // A snapshot from the leader is stepped but not yet restored:
            // the state machine is behind the log's start, and that
            // snapshot is the newer one anyway.
            return Ok(());
        };
        // The state saved as "everything up to `applied`" must hold exactly
        // that, no less and no more: the core's applied index is the
        // driver's word for what the state machine holds.
        let state = node.applied.clone();
        self.checker
            .check_snapshot_complete(node.id, applied, &state)?;
        if node
            .snapshot
            .as_ref()
            .is_some_and(|cur| (cur.index, cur.term) == (applied, term))
        {
            return Ok(()); // Never overwrite a published snapshot.
        }
        let snap = SimSnapshot {
            index: applied,
            term,
            state,
            membership: raft.membership_at(applied).clone(),
        };
        // The state is encoded here; the file is written off the node task
        // and reported later (at most one at a time), as in the node task.
        let delay = match self.cfg.faults.max_snapshot_save_ticks {
            0 => 0,
            max => self.rng.range(0, max + 1),
        };
        if delay > 0 {
            // The state machine encodes meanwhile (the node task's does so
            // on a blocking thread): apply and reads wait, consensus not.
            let node = &mut self.nodes[k];
            if let Some(raft) = node.raft.as_mut() {
                raft.hold_apply(true);
                node.pipeline.hold_reads(true);
            }
            node.saving = Some((self.now + delay, snap));
            return Ok(());
        }
        self.snapshot_saved(k, snap);
        Ok(())
    }

    /// The state machine is back from encoding: apply goes on, and the
    /// reads that waited for it are served.
    fn release_apply(&mut self, k: usize) -> Result<(), String> {
        if !self.nodes[k].raft.as_ref().is_some_and(|r| r.apply_held()) {
            return Ok(());
        }
        let Some(((), out)) = self.with_pipeline(k, None, |raft, p, io| {
            raft.hold_apply(false);
            p.hold_reads(false);
            p.serve_reads(io);
        }) else {
            return Ok(());
        };
        self.take_outputs(k, out)?;
        self.drive(k)
    }

    /// A snapshot file is durable: publish it (unless a newer one is) and
    /// let the log forget what it covers.
    pub(super) fn snapshot_saved(&mut self, k: usize, snap: SimSnapshot) {
        let node = &mut self.nodes[k];
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        if node
            .snapshot
            .as_ref()
            .is_some_and(|cur| cur.index >= snap.index)
        {
            return; // A newer snapshot was installed meanwhile.
        }
        let (index, term) = (snap.index, snap.term);
        node.snapshot = Some(snap);
        self.stats.snapshots_taken += 1;
        if !raft.compact(index) {
            return;
        }
        // The power may fail while the compaction deletes covered segments.
        let f = self.cfg.faults.compaction_power_loss;
        let power_fails = f > 0.0 && self.rng.chance(f);
        let failed = self.nodes[k]
            .store
            .compact_and_sync(index, term, power_fails)
            .is_err();
        if power_fails && failed {
            self.stats.compaction_power_losses += 1;
            let id = self.nodes[k].id;
            self.trace.push(
                self.now,
                TraceEvent::Partition(format!("node {id}: power lost while compacting")),
            );
            self.crash_for_a_while(k);
        }
        // Any other failure (a disk that failed earlier) leaves the log
        // store holding more than the core: harmless (a restart loads it
        // and merges the snapshot).
    }

    // ----- whole runs --------------------------------------------------------
}
