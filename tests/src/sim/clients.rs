//! Clients: proposals, sessions retried under skewed leader clocks, and
//! linearizable reads.

use super::*;

impl Sim {
    /// Proposes a session request on node `k` (stamped with its clock);
    /// returns the command id if the node took it as leader.
    pub(super) fn propose_session_op(
        &mut self,
        k: usize,
        op: ha_core::protocol::LogOp,
    ) -> Option<u64> {
        let cmd = self.fresh_cmd();
        let payload = sessions::payload(cmd, self.clock_ms(k), op);
        self.propose_payload(k, cmd, Bytes::from(payload))
            .map(|_| cmd)
    }

    /// Proposes `payload` (command `cmd`) on node `k`; returns its index if
    /// the node took it as leader.
    pub(super) fn propose_payload(
        &mut self,
        k: usize,
        cmd: u64,
        payload: Bytes,
    ) -> Option<LogIndex> {
        let id = self.nodes[k].id;
        if self.is_paused(k) {
            return None;
        }
        let raft = self.nodes[k].raft.as_mut()?;
        let res = raft.propose(payload);
        self.trace.push(
            self.now,
            TraceEvent::Propose(id, cmd, res.as_ref().ok().map(|r| r.0)),
        );
        let (index, term) = res.ok()?;
        // A displaced proposal's entry never committed: it is simply never
        // acknowledged.
        let _displaced = self.nodes[k].pipeline.proposed(index, term, cmd);
        let driven = self.drive(k);
        self.note(driven);
        Some(index)
    }

    /// Moves every session client one step (see `sessions`).
    pub(super) fn step_session_clients(&mut self) {
        if self.cfg.propose <= 0.0 {
            return; // Quiet (healing): no new traffic.
        }
        for c in 0..self.clients.len() {
            if !self.rng.chance(self.cfg.propose) {
                continue;
            }
            let k = self.rng.range(0, self.nodes.len() as u64) as usize;
            let now = self.now;
            let client = &mut self.clients[c];
            match (client.id, client.registering, client.pending.as_ref()) {
                (None, None, _) => {
                    let secret = client.secret;
                    let sent =
                        self.propose_session_op(k, ha_core::protocol::LogOp::Register { secret });
                    self.clients[c].registering = sent.map(|cmd| (cmd, now));
                }
                (None, Some((cmd, at)), _) => {
                    if let Some(index) = self.acked.get(&cmd) {
                        let client = &mut self.clients[c];
                        client.id = Some(index.0);
                        client.registering = None;
                        client.next_seq = 1;
                        client.done_in_session = 0;
                    } else if now.saturating_sub(at) > SESSION_RETRY_TICKS {
                        // A lost registration opens a session nobody uses.
                        self.clients[c].registering = None;
                    }
                }
                (Some(_), _, None) => {
                    let op = self.next_op;
                    self.next_op += 1;
                    let client = &mut self.clients[c];
                    let seq = client.next_seq;
                    client.next_seq += 1;
                    client.pending = Some(sessions::Pending {
                        op,
                        seq,
                        cmds: Vec::new(),
                        sent_at: now,
                        attempts: 0,
                    });
                    self.session_attempt(c, k);
                }
                (Some(_), _, Some(p)) => {
                    if p.cmds.iter().any(|cmd| self.acked.contains_key(cmd)) {
                        let client = &mut self.clients[c];
                        client.pending = None;
                        client.done_in_session += 1;
                        if client.done_in_session >= 3 {
                            // A new session now and then: a session's first
                            // command is where expiry bugs hide.
                            client.id = None;
                        }
                    } else if now.saturating_sub(p.sent_at) > SESSION_RETRY_TICKS {
                        if p.attempts >= 6 {
                            // Give up (the session may have expired).
                            let client = &mut self.clients[c];
                            client.pending = None;
                            client.id = None;
                        } else {
                            self.session_attempt(c, k);
                        }
                    }
                }
            }
        }
    }

    /// Sends (again) client `c`'s pending operation, through node `k`.
    pub(super) fn session_attempt(&mut self, c: usize, k: usize) {
        let client = &self.clients[c];
        let (Some(id), Some(p)) = (client.id, client.pending.as_ref()) else {
            return;
        };
        let op = ha_core::protocol::LogOp::Command(ha_core::protocol::SessionCommand {
            client: id,
            secret: client.secret,
            seq: p.seq,
            ack_below: p.seq,
            body: sessions::op_body(p.op),
        });
        let sent = self.propose_session_op(k, op);
        let now = self.now;
        if let Some(p) = self.clients[c].pending.as_mut() {
            p.attempts += 1;
            p.sent_at = now;
            p.cmds.extend(sent);
        }
    }

    /// Asks node `id` for a ReadIndex; returns whether it accepted.
    pub fn try_read_on(&mut self, id: NodeId) -> bool {
        self.start_read(id).is_some()
    }

    pub(super) fn start_read(&mut self, id: NodeId) -> Option<u64> {
        let k = (id.0 - 1) as usize;
        let ctx = self.next_read;
        self.next_read += 1;
        let floor = self.max_acked_index;
        if self.is_paused(k) {
            return None;
        }
        self.sync_clock(k);
        let path = self.nodes[k].raft.as_mut()?.read_lease(ctx).ok()?;
        self.nodes[k].read_floors.insert(ctx, floor);
        match path {
            ha_core::raft::ReadPath::Lease { index } => {
                // As the node task does: served now if applied, else later.
                self.stats.lease_reads += 1;
                if let Some(((), out)) =
                    self.with_pipeline(k, None, |_, p, io| p.read_confirmed(index, ctx, io))
                {
                    let taken = self.take_outputs(k, out);
                    self.note(taken);
                }
            }
            ha_core::raft::ReadPath::Round => self.nodes[k].pipeline.read_started(ctx, ctx),
        }
        let driven = self.drive(k);
        self.note(driven);
        Some(ctx)
    }

    /// A linearizable read on node `id`: returns the index it was served at
    /// (checked against every write acknowledged before it), or a failure if
    /// the node refused it or could not confirm it within 60 ticks.
    pub fn read_on(&mut self, id: NodeId) -> Result<LogIndex, Failure> {
        let Some(ctx) = self.start_read(id) else {
            return Err(self.fail(format!("node {id} refused the read")));
        };
        for _ in 0..60 {
            if let Some(index) = self.served_reads.get(&ctx) {
                return Ok(*index);
            }
            self.run_ticks(1)?;
        }
        Err(self.fail(format!(
            "node {id} did not confirm read {ctx} within 60 ticks"
        )))
    }

    /// Proposes command `cmd` on node `id`. Returns the index it got if the
    /// node accepted it as leader.
    pub fn propose_on(&mut self, id: NodeId, cmd: u64) -> Option<LogIndex> {
        let k = (id.0 - 1) as usize;
        self.propose_payload(k, cmd, Bytes::copy_from_slice(&cmd.to_le_bytes()))
    }

    /// Proposes a fresh command to the current leader, if any.
    pub fn propose(&mut self) -> Option<(u64, LogIndex)> {
        let leader = self.leader()?;
        let cmd = self.fresh_cmd();
        self.propose_on(leader, cmd).map(|i| (cmd, i))
    }

    /// A command id never used before (fresh ids start at
    /// [`FRESH_CMD_BASE`], so they never collide with ids a test picks).
    pub fn fresh_cmd(&mut self) -> u64 {
        let c = self.next_cmd;
        self.next_cmd += 1;
        c
    }

    pub(super) fn random_clients(&mut self) {
        if !self.clients.is_empty() {
            self.step_session_clients();
        }
        if self.cfg.propose > 0.0 && self.rng.chance(self.cfg.propose) {
            // A client picks a node; only a leader accepts.
            let k = self.rng.range(0, self.nodes.len() as u64) as usize;
            let batch = self.rng.range(1, 4);
            let id = self.nodes[k].id;
            for _ in 0..batch {
                let cmd = self.fresh_cmd();
                let forged = self.cfg.forged_batch_starts;
                let taken = if forged > 0.0 && self.rng.chance(forged) {
                    let filler = self.rng.range(4_200, 9_000) as usize;
                    let index = self.rng.next_u64() % (1 << 20);
                    let seq = self.rng.range(1, 64);
                    let payload = forged_payload(cmd, filler, index, seq);
                    self.stats.forged_commands += 1;
                    self.propose_payload(k, cmd, Bytes::from(payload))
                } else {
                    self.propose_on(id, cmd)
                };
                if taken.is_none() {
                    break;
                }
            }
        }
        if self.cfg.read > 0.0 && self.rng.chance(self.cfg.read) {
            let id = NodeId(self.rng.range(1, self.nodes.len() as u64 + 1));
            self.start_read(id);
        }
    }
}
