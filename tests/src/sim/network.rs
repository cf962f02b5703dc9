//! The simulated network and the faults the simulator injects: links,
//! partitions, message loss and delay, crashes and restarts.

use super::*;

impl Sim {
    /// Cuts `id` off from everyone until [`Sim::connect`].
    pub fn disconnect(&mut self, id: NodeId) {
        self.disconnected.insert(id);
        self.trace
            .push(self.now, TraceEvent::Partition(format!("disconnect {id}")));
    }

    /// Node `id` still sends but hears nothing (every link into it cut).
    pub fn deafen(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut.insert((other, id));
            }
        }
        self.trace
            .push(self.now, TraceEvent::Partition(format!("deafen {id}")));
    }

    /// Node `id` starts an election now (as if its timer fired), if it may.
    pub fn campaign_on(&mut self, id: NodeId) {
        let k = (id.0 - 1) as usize;
        if let Some(r) = self.nodes[k].raft.as_mut() {
            r.campaign_now();
        }
        let driven = self.drive(k);
        self.note(driven);
    }

    /// Asks node `id` to hand leadership to `to`; returns whether it took
    /// the request.
    pub fn transfer_on(&mut self, id: NodeId, to: NodeId) -> bool {
        let k = (id.0 - 1) as usize;
        let taken = self.nodes[k]
            .raft
            .as_mut()
            .is_some_and(|r| r.transfer_leadership(Some(to)).is_ok());
        let driven = self.drive(k);
        self.note(driven);
        taken
    }

    /// Undoes [`Sim::disconnect`] (links cut one by one stay cut).
    pub fn connect(&mut self, id: NodeId) {
        self.disconnected.remove(&id);
        self.trace
            .push(self.now, TraceEvent::Partition(format!("connect {id}")));
    }

    /// Splits the cluster into `groups`: links between groups are cut, and a
    /// node in no group is cut off from everyone.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.cut.clear();
        self.disconnected.clear();
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        for a in self.ids() {
            for b in self.ids() {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    self.cut.insert((a, b));
                }
            }
        }
        self.trace.push(
            self.now,
            TraceEvent::Partition(format!("partition {groups:?}")),
        );
    }

    pub(super) fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
            && !self.disconnected.contains(&from)
            && !self.disconnected.contains(&to)
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.disconnected.clear();
        self.trace
            .push(self.now, TraceEvent::Partition("heal".into()));
    }

    pub(super) fn send(&mut self, msg: Message) {
        *self.sent.entry(body_kind(&msg.body)).or_insert(0) += 1;
        if !self.link_up(msg.from, msg.to) {
            return;
        }
        let f = &self.cfg.faults;
        if f.drop > 0.0 && self.rng.chance(f.drop) {
            return;
        }
        let copies = if f.duplicate > 0.0 && self.rng.chance(f.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if f.max_delay_ticks > 0 {
                self.rng.range(0, f.max_delay_ticks + 1)
            } else {
                0
            };
            self.next_seq += 1;
            // Delivery happens at the earliest on the next tick.
            self.net.push(Packet {
                deliver_at: self.now + 1 + delay,
                seq: self.next_seq,
                msg: msg.clone(),
            });
        }
    }

    pub(super) fn deliver(&mut self, msg: Message) -> Result<(), String> {
        let k = (msg.to.0 - 1) as usize;
        // A cut made while the message was in flight drops it too.
        if !self.link_up(msg.from, msg.to) {
            return Ok(());
        }
        // No machine answers for a stranger's id (a leader may add one).
        if self.nodes.get(k).is_none_or(|n| n.raft.is_none()) {
            return Ok(());
        }
        self.stats.delivered += 1;
        self.trace
            .push(self.now, TraceEvent::Deliver(trace::summarize(&msg)));
        if let Body::InstallSnapshot { index, .. } = msg.body {
            // The snapshot's bytes arrived with the message: on disk first.
            let Some(snap) = self
                .snapshot_payloads
                .get(&(msg.from, msg.to, index))
                .cloned()
            else {
                return Ok(());
            };
            self.checker.check_snapshot(msg.to, &snap.state)?;
            self.nodes[k].received.insert((snap.index, snap.term), snap);
        }
        if matches!(msg.body, Body::TimeoutNow { .. })
            && self.cfg.raft.lease.is_some()
            && !self.converging
            && self.rng.chance(0.5)
        {
            // The old leader is cut off the moment its successor is told to
            // campaign, and clients keep reading from it: it must not serve
            // them on a lease its successor's election ignores.
            self.disconnect(msg.from);
            self.probe(msg.from);
        }
        self.sync_clock(k);
        let raft = self.nodes[k].raft.as_mut().expect("checked above");
        // Correct peers never send what a node must refuse; when one does, a
        // safety property broke upstream (it is how a planted bug often
        // first shows).
        raft.step(msg)
            .map_err(|e| format!("node {} refused a message: {e}", k + 1))?;
        self.check_commit(k)?;
        self.drive(k)
    }

    pub(super) fn random_faults(&mut self) {
        self.random_membership_change();
        let f = self.cfg.faults.clone();
        if f.partition > 0.0 && self.rng.chance(f.partition) {
            self.random_partition();
        }
        if f.crash > 0.0 && self.rng.chance(f.crash) {
            let k = self.rng.range(0, self.nodes.len() as u64) as usize;
            self.crash_for_a_while(k);
        }
        if f.crash_leader > 0.0
            && self.rng.chance(f.crash_leader)
            && let Some(leader) = self.leader()
        {
            self.crash_for_a_while((leader.0 - 1) as usize);
        }
        if f.isolate_leader > 0.0
            && self.rng.chance(f.isolate_leader)
            && let Some(leader) = self.leader()
        {
            self.disconnect(leader);
        }
        if f.pause > 0.0 && self.rng.chance(f.pause) {
            let k = match self.leader() {
                Some(l) if self.rng.chance(0.5) => (l.0 - 1) as usize,
                _ => self.rng.range(0, self.nodes.len() as u64) as usize,
            };
            let ticks = self.rng.range(1, f.max_pause_ticks.max(1) + 1);
            if self.nodes[k].raft.is_some() && !self.is_paused(k) {
                self.paused.insert(k, self.now + ticks);
                self.trace
                    .push(self.now, TraceEvent::Pause(self.nodes[k].id, Some(ticks)));
            }
        }
        if f.transfer_leader > 0.0
            && self.rng.chance(f.transfer_leader)
            && let Some(leader) = self.leader()
            && !self.is_paused((leader.0 - 1) as usize)
        {
            // A named target may be no voter at all (refused), or the
            // leader itself; `None` picks the most up-to-date voter.
            let n = self.nodes.len() as u64;
            let to = match self.rng.range(0, n + 2) {
                0 => None,
                k => Some(NodeId(k)),
            };
            let raft = self.nodes[(leader.0 - 1) as usize]
                .raft
                .as_mut()
                .expect("the leader runs");
            if raft.transfer_leadership(to).is_ok() {
                self.stats.transfers += 1;
            }
        }
    }

    pub(super) fn random_partition(&mut self) {
        let n = self.nodes.len() as u64;
        let ids = self.ids();
        self.cut.clear();
        self.disconnected.clear();
        let desc = match self.rng.range(0, 5) {
            0 => "heal".to_string(),
            1 => {
                let a = NodeId(self.rng.range(1, n + 1));
                for b in &ids {
                    if *b != a {
                        self.cut.insert((a, *b));
                        self.cut.insert((*b, a));
                    }
                }
                format!("isolate {a}")
            }
            2 => {
                // Split into two groups at random.
                let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(0.5)).collect();
                for (i, a) in ids.iter().enumerate() {
                    for (j, b) in ids.iter().enumerate() {
                        if side[i] != side[j] {
                            self.cut.insert((*a, *b));
                        }
                    }
                }
                let left: Vec<u64> = ids
                    .iter()
                    .zip(&side)
                    .filter(|(_, s)| **s)
                    .map(|(a, _)| a.0)
                    .collect();
                format!("split {left:?} | rest")
            }
            3 => {
                let a = NodeId(self.rng.range(1, n + 1));
                let b = NodeId(self.rng.range(1, n + 1));
                if a != b {
                    self.cut.insert((a, b));
                }
                format!("one-way cut {a}->{b}")
            }
            _ => {
                // One node can send but not receive.
                let a = NodeId(self.rng.range(1, n + 1));
                for b in &ids {
                    if *b != a {
                        self.cut.insert((*b, a));
                    }
                }
                format!("deafen {a}")
            }
        };
        self.trace.push(self.now, TraceEvent::Partition(desc));
    }

    /// Crashes node `id`: its core, state machine and unsynced writes are gone.
    pub fn crash(&mut self, id: NodeId) {
        self.stop(id, true);
    }

    /// Stops node `id`: its core and state machine are gone, and with a
    /// power loss its unsynced writes (and maybe more: media damage).
    pub(super) fn stop(&mut self, id: NodeId, power_loss: bool) {
        if self.nodes[(id.0 - 1) as usize].raft.is_none() {
            return;
        }
        // Media damage on at most one node at a time (a minority): a node
        // is whole again once it runs and no longer repairs (this one too,
        // checked before it stops).
        for n in &mut self.nodes {
            if n.raft.as_ref().is_some_and(|r| !r.is_repairing()) {
                n.damaged = false;
            }
        }
        self.paused.remove(&((id.0 - 1) as usize));
        let node = &mut self.nodes[(id.0 - 1) as usize];
        node.raft = None;
        if !power_loss {
            node.store.stop_process();
        }
        let f = self.cfg.faults.media_damage;
        let others_whole = self.nodes.iter().all(|n| n.id == id || !n.damaged);
        let may_damage = power_loss && f > 0.0 && others_whole;
        let node = &mut self.nodes[(id.0 - 1) as usize];
        let tore = power_loss
            && node
                .store
                .crash(&mut self.rng, if may_damage { f / 2.0 } else { 0.0 });
        let damaged =
            tore || (may_damage && self.rng.chance(f) && node.store.damage(&mut self.rng));
        if damaged {
            node.damaged = true;
            self.stats.media_damage += 1;
            let what = if tore {
                "a torn sector write scrambled synced bytes"
            } else {
                "disk damaged"
            };
            self.trace.push(
                self.now,
                TraceEvent::Partition(format!("node {id}: {what}")),
            );
        }
        let node = &mut self.nodes[(id.0 - 1) as usize];
        node.applied.clear();
        node.pipeline = Pipeline::new(LogIndex(0));
        node.read_floors.clear();
        node.in_flight = None;
        node.saving = None;
        node.received.clear();
        self.stats.crashes += 1;
        self.trace.push(self.now, TraceEvent::Crash(id));
    }

    /// Restarts node `id` from its durable state.
    pub fn restart(&mut self, id: NodeId) {
        let k = (id.0 - 1) as usize;
        if self.nodes[k].raft.is_some() {
            return;
        }
        self.nodes[k].incarnation += 1;
        if let Err(e) = self.boot(k) {
            self.note(Err(e));
            return;
        }
        self.trace.push(self.now, TraceEvent::Restart(id));
    }

    /// Right after node `restarted` came back: the leader is cut off and
    /// another node campaigns at once, so the restarted node's vote could
    /// decide an election while the leader's lease (which may rest on that
    /// node's answer from before its crash) still runs; and clients keep
    /// reading from the old leader.
    pub(super) fn campaign_past_a_restart(&mut self, restarted: NodeId) {
        // (The scenario's deterministic form is in `tests/lease.rs`.)
        let Some(leader) = self.leader() else {
            return;
        };
        let others: Vec<usize> = (0..self.nodes.len())
            .filter(|&k| {
                let id = self.nodes[k].id;
                id != leader && id != restarted && !self.is_paused(k)
            })
            .filter(|&k| self.nodes[k].raft.is_some())
            .collect();
        if others.is_empty() {
            return;
        }
        let k = others[self.rng.range(0, others.len() as u64) as usize];
        self.disconnect(leader);
        if let Some(r) = self.nodes[k].raft.as_mut() {
            r.campaign_now();
        }
        let driven = self.drive(k);
        self.note(driven);
        self.probe(leader);
    }

    /// Clients ask node `id` for a read at each of the next election
    /// timeout's ticks.
    fn probe(&mut self, id: NodeId) {
        for t in 1..=self.cfg.raft.election_timeout_min_ticks {
            self.probe_reads.push((self.now + t, id));
        }
    }

    pub(super) fn crash_for_a_while(&mut self, k: usize) {
        if self.nodes[k].raft.is_none() {
            return;
        }
        let id = self.nodes[k].id;
        self.crash(id);
        let down = self.rng.range(1, self.cfg.faults.max_down_ticks.max(1) + 1);
        self.nodes[k].restart_at = Some(self.now + down);
    }

    /// Stops node `k`'s process (no power loss: what it wrote stays in the
    /// page cache, durable or not) and restarts it later.
    pub(super) fn stop_process_for_a_while(&mut self, k: usize) {
        if self.nodes[k].raft.is_none() {
            return;
        }
        let id = self.nodes[k].id;
        self.stop(id, false);
        let down = self.rng.range(1, self.cfg.faults.max_down_ticks.max(1) + 1);
        self.nodes[k].restart_at = Some(self.now + down);
    }

    pub(super) fn shuffled_nodes(&mut self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        for i in 0..order.len() {
            let j = i + self.rng.range(0, (order.len() - i) as u64) as usize;
            order.swap(i, j);
        }
        order
    }
}
