//! The simulator as the node task's pipeline IO: what one Ready wants
//! sent, applied and answered.

use super::*;

/// The part of a Ready that waits for its persistence (as in the node
/// task): written, then the rest of its duties done, when it completes.
pub(super) struct InFlight {
    /// What the pipeline asked to make durable.
    pub(super) write: Write,
    pub(super) torn: bool,
    /// The fsync fails with an I/O error (`Faults::fsync_eio`).
    pub(super) eio: bool,
    /// The term of the entry before `write.entries[0]` when the Ready was
    /// taken.
    pub(super) first_prev_term: Term,
    /// The write is durable and its messages sent; the application waits.
    pub(super) persisted: bool,
    /// The installed snapshot's state, taken from the staged copy when it
    /// was promoted (before the log recorded the install).
    pub(super) install_state: Option<BTreeMap<LogIndex, u64>>,
}

/// What one pipeline step produced, for the simulator to act on.
#[derive(Default)]
pub(super) struct SimOutputs {
    pub(super) messages: Vec<Message>,
    pub(super) snapshot_requests: Vec<NodeId>,
    pub(super) soft: Option<ha_core::raft::SoftState>,
    pub(super) error: Option<String>,
}

/// The simulator's side of the node task's pipeline: the network, the
/// state machine (command ids by index), the clients, and the checker.
pub(super) struct SimIo<'a> {
    pub(super) id: NodeId,
    pub(super) checker: &'a mut Checker,
    pub(super) applied: &'a mut BTreeMap<LogIndex, u64>,
    pub(super) read_floors: &'a mut BTreeMap<u64, LogIndex>,
    pub(super) acked: &'a mut BTreeMap<u64, LogIndex>,
    pub(super) stats: &'a mut RunStats,
    pub(super) max_acked: &'a mut LogIndex,
    pub(super) served_reads: &'a mut BTreeMap<u64, LogIndex>,
    /// The state of the snapshot the step restores.
    pub(super) restore: Option<BTreeMap<LogIndex, u64>>,
    /// The state machine is away encoding a snapshot (apply is held): the
    /// core must hand it nothing to apply or restore.
    pub(super) held: bool,
    pub(super) out: SimOutputs,
}

impl PipelineIo for SimIo<'_> {
    type Reply = u64;
    type Read = u64;
    fn send(&mut self, msg: Message) {
        self.out.messages.push(msg);
    }
    fn send_snapshot(&mut self, peer: NodeId) {
        self.out.snapshot_requests.push(peer);
    }
    fn soft_state(&mut self, state: ha_core::raft::SoftState) {
        self.out.soft = Some(state);
    }
    fn restore(&mut self, _state: &[u8]) -> Result<(), ha_core::node::RestoreError> {
        if self.held {
            return Err(
                format!("node {}: a snapshot restored while apply was held", self.id).into(),
            );
        }
        let state = self
            .restore
            .take()
            .ok_or("a snapshot restore without a received snapshot")?;
        *self.applied = state;
        Ok(())
    }
    fn apply(&mut self, e: &ha_core::types::Entry) -> Option<Bytes> {
        if self.held {
            self.out.error.get_or_insert(format!(
                "node {}: entry {} applied while apply was held",
                self.id, e.index
            ));
        }
        if let Err(err) = self.checker.on_apply(self.id, e) {
            self.out.error.get_or_insert(err);
        }
        let cmd = match &e.payload {
            EntryPayload::Command(b) => {
                let mut buf = [0u8; 8];
                buf.copy_from_slice(&b[..8]);
                u64::from_le_bytes(buf)
            }
            _ => 0,
        };
        self.applied.insert(e.index, cmd);
        None
    }
    fn answer(&mut self, cmd: u64, result: Result<(LogIndex, Bytes), NodeError>) {
        if let Ok((index, _)) = result {
            self.acked.insert(cmd, index);
            self.stats.acknowledged += 1;
            *self.max_acked = (*self.max_acked).max(index);
        }
    }
    fn serve_read(&mut self, ctx: u64, index: LogIndex) {
        let floor = self.read_floors.remove(&ctx).unwrap_or_default();
        if index < floor {
            self.out.error.get_or_insert(format!(
                "Linearizability: node {} served read {ctx} at index {index}, but index {floor} \
                 was acknowledged before the read began",
                self.id
            ));
        }
        self.stats.reads += 1;
        self.served_reads.insert(ctx, index);
    }
    fn fail_read(&mut self, ctx: u64, _error: NodeError) {
        self.read_floors.remove(&ctx);
    }
}
