//! The node's inbox: where a transport delivers peer messages.
//!
//! Owns: [`Inbox`] (the sending side, cloned by every connection) and
//! [`InboxReceiver`] (the node task's side).
//!
//! Invariants: the inbox holds at most its message count and, but for one
//! message delivered into an empty inbox, at most its byte budget of
//! messages as they sit in memory ([`Message::approx_bytes`], not their
//! wire size: a decoded append can be many times its frame). A message
//! that does not fit is refused at once, never waited for (Raft resends),
//! and the transport counts it. Bytes are released when the node task
//! takes the message.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::raft::Message;

/// Why a message was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The inbox holds as many messages, or bytes, as it may.
    #[error("the node's inbox is full")]
    Full,
    /// The node stopped.
    #[error("the node stopped")]
    Closed,
}

/// The sending side of a node's inbox. Clones share it.
#[derive(Clone, Debug)]
pub struct Inbox {
    tx: mpsc::Sender<(Message, usize)>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The receiving side of a node's inbox.
#[derive(Debug)]
pub struct InboxReceiver {
    rx: mpsc::Receiver<(Message, usize)>,
    bytes: Arc<AtomicUsize>,
}

impl Inbox {
    /// An inbox of at most `messages` messages (at least 1) and `max_bytes`
    /// bytes of them in memory.
    pub fn channel(messages: usize, max_bytes: usize) -> (Inbox, InboxReceiver) {
        let (tx, rx) = mpsc::channel(messages.max(1));
        let bytes = Arc::new(AtomicUsize::new(0));
        (
            Inbox {
                tx,
                bytes: bytes.clone(),
                max_bytes,
            },
            InboxReceiver { rx, bytes },
        )
    }

    /// Delivers `m` if it fits; never waits.
    pub fn try_deliver(&self, m: Message) -> Result<(), DeliverError> {
        if self.tx.is_closed() {
            return Err(DeliverError::Closed);
        }
        let cost = m.approx_bytes();
        let max = self.max_bytes;
        // One message always fits an empty inbox, so an append larger than
        // the budget is slow, not impossible.
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held.saturating_add(cost) <= max).then(|| held.saturating_add(cost))
            })
            .map_err(|_| DeliverError::Full)?;
        match self.tx.try_send((m, cost)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.bytes.fetch_sub(cost, Ordering::AcqRel);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => DeliverError::Full,
                    mpsc::error::TrySendError::Closed(_) => DeliverError::Closed,
                })
            }
        }
    }

    /// Bytes of messages the inbox holds now.
    pub fn held_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

impl InboxReceiver {
    /// The next message; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Message> {
        let (m, cost) = self.rx.recv().await?;
        self.bytes.fetch_sub(cost, Ordering::AcqRel);
        Some(m)
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        let (m, cost) = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(cost, Ordering::AcqRel);
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Body;
    use crate::types::{Entry, EntryPayload, LogIndex, NodeId, Term};

    fn append(entries: usize, payload: usize) -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(1),
            body: Body::Append {
                prev_index: LogIndex(0),
                prev_term: Term(0),
                entries: (0..entries)
                    .map(|i| Entry {
                        index: LogIndex(i as u64 + 1),
                        term: Term(1),
                        payload: EntryPayload::Command(vec![0; payload].into()),
                    })
                    .collect(),
                commit: LogIndex(0),
            },
        }
    }

    #[test]
    fn the_inbox_is_bounded_by_bytes_and_releases_them_when_taken() {
        let one = append(10, 1000).approx_bytes();
        assert!(one > 10 * 1000, "entries and payloads are counted: {one}");
        let (inbox, mut rx) = Inbox::channel(100, 2 * one);
        inbox.try_deliver(append(10, 1000)).unwrap();
        inbox.try_deliver(append(10, 1000)).unwrap();
        assert_eq!(inbox.try_deliver(append(10, 1000)), Err(DeliverError::Full));
        assert_eq!(inbox.held_bytes(), 2 * one);
        assert!(rx.try_recv().is_some());
        assert_eq!(inbox.held_bytes(), one);
        inbox.try_deliver(append(10, 1000)).unwrap();
    }

    #[test]
    fn one_message_larger_than_the_budget_fits_an_empty_inbox_only() {
        let (inbox, mut rx) = Inbox::channel(100, 100);
        inbox.try_deliver(append(10, 1000)).unwrap();
        assert_eq!(inbox.try_deliver(append(1, 0)), Err(DeliverError::Full));
        assert!(rx.try_recv().is_some());
        assert_eq!(inbox.held_bytes(), 0);
        inbox.try_deliver(append(1, 0)).unwrap();
    }

    #[test]
    fn a_full_queue_or_a_stopped_node_gives_the_bytes_back() {
        let (inbox, rx) = Inbox::channel(1, 1 << 20);
        inbox.try_deliver(append(1, 0)).unwrap();
        let held = inbox.held_bytes();
        assert_eq!(inbox.try_deliver(append(1, 0)), Err(DeliverError::Full));
        assert_eq!(inbox.held_bytes(), held);
        drop(rx);
        assert_eq!(inbox.try_deliver(append(1, 0)), Err(DeliverError::Closed));
        assert_eq!(inbox.held_bytes(), held);
        let (inbox, rx) = Inbox::channel(1, 1 << 20);
        drop(rx);
        assert_eq!(inbox.try_deliver(append(1, 0)), Err(DeliverError::Closed));
        assert_eq!(inbox.held_bytes(), 0);
    }
}
