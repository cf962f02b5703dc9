//! Framing: postcard messages behind a length prefix, with hard limits on
//! size, memory and time.
//!
//! Owns: the wire format of every QUIC stream in ha:
//!
//! ```text
//! frame = length: u32 little-endian | postcard bytes (exactly `length`)
//! ```
//!
//! and the one way frames are read from the network ([`read_frame_with`]).
//!
//! Invariants:
//! 1. A length above the stream's cap is refused before anything is
//!    allocated for it.
//! 2. Memory for a frame grows with the bytes that actually arrived, never
//!    with the length a peer claims: the buffer at most doubles per step and
//!    never exceeds the announced length. When a byte budget is given, every
//!    step is paid for from it first, and the frame is refused
//!    ([`FrameError::OverBudget`]) when the budget cannot pay.
//! 3. A frame that has started arriving must complete by its deadline
//!    ([`FrameDeadline`]), or it is refused ([`FrameError::TimedOut`]).
//! 4. A frame decodes to exactly one value with no bytes left over, or it is
//!    refused; nothing from a refused frame is acted on.
//! 5. A stream that ends inside a frame is an error (truncation), one that
//!    ends between frames is a clean end.
//! 6. Encoding never loses what the output buffer already held: a message
//!    that fails to encode (or is too large) leaves `out` as it was.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Largest frame any stream accepts, and the default cap of replication
/// frames (appends), which must hold the largest client request plus a
/// full batch of entries (see `transport::QuicLimits`).
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Largest frame on the control stream (votes, heartbeats, responses), and
/// of every frame that opens a stream (hellos, snapshot headers, verdicts).
pub const MAX_CONTROL_FRAME_BYTES: usize = 64 << 10;
/// The first step of a frame buffer's growth: small enough that a peer who
/// announces a large frame and sends nothing pins almost nothing.
pub const FIRST_BUFFER_BYTES: usize = 4 << 10;
const PREFIX: usize = 4;

const _: () = assert!(MAX_CONTROL_FRAME_BYTES <= MAX_FRAME_BYTES);
const _: () = assert!(MAX_FRAME_BYTES <= u32::MAX as usize);

/// Why a frame was refused.
#[derive(thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the cap.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream failed.
    #[error("stream error: {0}")]
    Stream(String),
    /// The frame did not arrive by its deadline.
    #[error("frame did not arrive in time")]
    TimedOut,
    /// The byte budget for unfinished frames could not pay for the next
    /// piece of this one.
    #[error("no memory budget left for {wanted} more bytes of a frame of {len}")]
    OverBudget {
        /// Bytes the buffer needed to grow by.
        wanted: usize,
        /// Announced length of the frame.
        len: usize,
    },
}

ha_core::debug_as_display!(FrameError);

/// When a frame must have arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameDeadline {
    /// Never (the stream is trusted, or lives and dies with its connection).
    Never,
    /// The whole frame, its first byte included, by this instant: for
    /// streams that exist to carry one frame (a client request, a hello).
    At(Instant),
    /// Waiting for the first byte is free (a stream idles between frames);
    /// once it came, the frame must complete within this long plus the
    /// time its bytes received so far take at [`MIN_FRAME_BYTES_PER_SEC`]:
    /// a large append arriving steadily on a slow link is not cut off as a
    /// stall, while a sender that stops is (whatever length it announced).
    AfterFirstByte(Duration),
}

/// The slowest rate a frame read under [`FrameDeadline::AfterFirstByte`]
/// is given time for: 1 MiB/s.
pub const MIN_FRAME_BYTES_PER_SEC: u64 = 1 << 20;

/// Limits of one frame read.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits<'a> {
    /// Largest acceptable frame body.
    pub max_bytes: usize,
    /// Bytes of unfinished frames, shared by many streams; `None`: unbudgeted
    /// (only for streams from a trusted party, such as a node's answer to a
    /// client).
    pub budget: Option<&'a Arc<Semaphore>>,
    /// A second budget every byte is also paid from: one connection's
    /// share of `budget`, so that no single connection can hold all of it
    /// (and get others' frames refused). `None`: no share.
    pub share: Option<&'a Arc<Semaphore>>,
    /// When the frame must have arrived.
    pub deadline: FrameDeadline,
}

impl ReadLimits<'_> {
    /// Only a size cap: no budget, no deadline.
    pub fn size(max_bytes: usize) -> ReadLimits<'static> {
        ReadLimits {
            max_bytes,
            budget: None,
            share: None,
            deadline: FrameDeadline::Never,
        }
    }
}

/// Lends `Extend<u8>` to a borrowed vector, so postcard appends in place and
/// the vector survives an encoding error (invariant 6).
struct Appender<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// Appends `msg` as one frame to `out`, refusing frames above
/// [`MAX_FRAME_BYTES`].
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    encode_within(msg, out, MAX_FRAME_BYTES)
}

/// Appends `msg` as one frame to `out`, refusing frames above `max` bytes
/// (and above [`MAX_FRAME_BYTES`]); on error `out` is unchanged.
pub fn encode_within<T: Serialize>(
    msg: &T,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), FrameError> {
    let max = max.min(MAX_FRAME_BYTES);
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX]);
    if let Err(e) = postcard::to_extend(msg, Appender(out)) {
        out.truncate(start);
        return Err(FrameError::Malformed(e.to_string()));
    }
    let len = out.len() - start - PREFIX;
    if len > max {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    // `len <= MAX_FRAME_BYTES <= u32::MAX` (const assertion above).
    out[start..start + PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Decodes one frame's body (without its prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (v, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(v)
}

/// Decodes the first frame in `buf`: `Ok(None)` if `buf` holds only part of
/// it, else the value and the bytes it used.
pub fn decode<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let Some(body) = buf.get(PREFIX..PREFIX + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, PREFIX + len)))
}

/// Reads one frame from a QUIC stream with only a size cap; `Ok(None)` at a
/// clean end of stream.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<T>, FrameError> {
    read_frame_with(recv, &ReadLimits::size(max)).await
}

/// Awaits `f` until `deadline` (`None`: without limit).
async fn within<F: Future>(deadline: Option<Instant>, f: F) -> Result<F::Output, FrameError> {
    match deadline {
        None => Ok(f.await),
        Some(d) => tokio::time::timeout_at(d, f)
            .await
            .map_err(|_| FrameError::TimedOut),
    }
}

/// A frame body being received: its bytes, and the budget it holds for its
/// capacity (invariant 2).
struct Growing {
    buf: Vec<u8>,
    /// Capacity asked for (and paid for, when budgeted); the allocator may
    /// round `buf.capacity()` up.
    reserved: usize,
    paid: Option<OwnedSemaphorePermit>,
    /// What the connection's share holds for it (see [`ReadLimits::share`]).
    paid_share: Option<OwnedSemaphorePermit>,
}

impl Growing {
    /// Makes room for `more` bytes of a frame of `len`.
    fn reserve(
        &mut self,
        more: usize,
        len: usize,
        budget: Option<&Arc<Semaphore>>,
        share: Option<&Arc<Semaphore>>,
    ) -> Result<(), FrameError> {
        let need = self.buf.len() + more;
        if need <= self.reserved {
            return Ok(());
        }
        let target = need
            .max(self.reserved.saturating_mul(2))
            .max(FIRST_BUFFER_BYTES)
            .min(len);
        let wanted = target - self.reserved;
        let pay = |from: Option<&Arc<Semaphore>>| match from {
            None => Ok(None),
            Some(b) => u32::try_from(wanted)
                .ok()
                .and_then(|n| b.clone().try_acquire_many_owned(n).ok())
                .map(Some)
                .ok_or(FrameError::OverBudget { wanted, len }),
        };
        // Both or neither: a share paid for a budget that cannot pay goes
        // back when `from_share` drops.
        let from_share = pay(share)?;
        let from_budget = pay(budget)?;
        for (held, permit) in [
            (&mut self.paid_share, from_share),
            (&mut self.paid, from_budget),
        ] {
            match (held.as_mut(), permit) {
                (Some(h), Some(p)) => h.merge(p),
                (None, Some(p)) => *held = Some(p),
                (_, None) => {}
            }
        }
        self.buf.reserve_exact(target - self.buf.len());
        self.reserved = target;
        Ok(())
    }
}

/// Reads one frame from a QUIC stream within `limits` (invariants 1–5);
/// `Ok(None)` at a clean end of stream.
pub async fn read_frame_with<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    limits: &ReadLimits<'_>,
) -> Result<Option<T>, FrameError> {
    Ok(read_frame_sized(recv, limits).await?.map(|(v, _)| v))
}

/// [`read_frame_with`], also returning the frame's length in bytes (what a
/// caller keeping the decoded value for a while accounts for it).
pub async fn read_frame_sized<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    limits: &ReadLimits<'_>,
) -> Result<Option<(T, usize)>, FrameError> {
    let mut deadline = match limits.deadline {
        FrameDeadline::At(t) => Some(t),
        FrameDeadline::Never | FrameDeadline::AfterFirstByte(_) => None,
    };
    let mut prefix = [0u8; PREFIX];
    let mut got = 0;
    while got < PREFIX {
        match within(deadline, recv.read(&mut prefix[got..])).await? {
            Ok(Some(n)) => {
                if got == 0
                    && n > 0
                    && let FrameDeadline::AfterFirstByte(d) = limits.deadline
                {
                    deadline = Instant::now().checked_add(d);
                }
                got += n;
            }
            Ok(None) if got == 0 => return Ok(None),
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > limits.max_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: limits.max_bytes,
        });
    }
    let scaled = matches!(limits.deadline, FrameDeadline::AfterFirstByte(_));
    let mut body = Growing {
        buf: Vec::new(),
        reserved: 0,
        paid: None,
        paid_share: None,
    };
    while body.buf.len() < len {
        let rest = len - body.buf.len();
        // Time earned by the bytes received (capped by `max_bytes`: the
        // product cannot overflow).
        let until = match deadline {
            Some(d) if scaled => d.checked_add(Duration::from_millis(
                body.buf.len() as u64 * 1000 / MIN_FRAME_BYTES_PER_SEC,
            )),
            d => d,
        };
        let chunk = match within(until, recv.read_chunk(rest, true)).await? {
            Ok(Some(c)) => c.bytes,
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        };
        // `read_chunk` returns at most `rest` bytes; a defensive cut keeps
        // the buffer within the announced length regardless.
        let take = chunk.len().min(rest);
        body.reserve(take, len, limits.budget, limits.share)?;
        body.buf.extend_from_slice(&chunk[..take]);
    }
    decode_body(&body.buf).map(|v| Some((v, len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::raft::{Body, Message};
    use ha_core::types::{Entry, EntryPayload, LogIndex, NodeId, Term};
    use proptest::prelude::*;

    fn msg() -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: Body::Append {
                prev_index: LogIndex(4),
                prev_term: Term(3),
                entries: vec![Entry {
                    index: LogIndex(5),
                    term: Term(3),
                    payload: EntryPayload::Command(bytes::Bytes::from_static(b"hello")),
                }],
                commit: LogIndex(4),
            },
        }
    }

    #[test]
    fn frames_round_trip_and_refuse_what_is_wrong() {
        let mut buf = Vec::new();
        encode(&msg(), &mut buf).unwrap();
        encode(&msg(), &mut buf).unwrap();
        let (m, used) = decode::<Message>(&buf, MAX_FRAME_BYTES).unwrap().unwrap();
        assert_eq!(m, msg());
        assert_eq!(
            decode::<Message>(&buf[used..], MAX_FRAME_BYTES)
                .unwrap()
                .unwrap()
                .0,
            msg()
        );
        // Incomplete: wait for more.
        assert!(
            decode::<Message>(&buf[..used - 1], MAX_FRAME_BYTES)
                .unwrap()
                .is_none()
        );
        // Oversized prefix: refused before reading the body.
        let huge = (u32::MAX).to_le_bytes();
        assert!(matches!(
            decode::<Message>(&huge, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        // Trailing bytes inside a frame: refused.
        let mut body = buf[4..used].to_vec();
        body.push(0);
        assert!(matches!(
            decode_body::<Message>(&body),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn a_failed_encode_leaves_the_buffer_as_it_was() {
        // The story: `encode` handed the buffer to postcard by value, so a
        // failed encode lost every frame already batched in it.
        let mut buf = Vec::new();
        encode(&msg(), &mut buf).unwrap();
        let before = buf.clone();
        let big = Message {
            body: Body::Append {
                prev_index: LogIndex(4),
                prev_term: Term(3),
                entries: vec![Entry {
                    index: LogIndex(5),
                    term: Term(3),
                    payload: EntryPayload::Command(bytes::Bytes::from(vec![0u8; 2000])),
                }],
                commit: LogIndex(4),
            },
            ..msg()
        };
        assert!(matches!(
            encode_within(&big, &mut buf, 1000),
            Err(FrameError::TooLarge { max: 1000, .. })
        ));
        assert_eq!(buf, before);
        encode_within(&big, &mut buf, 4000).unwrap();
        assert_eq!(
            decode::<Message>(&buf[before.len()..], 4000)
                .unwrap()
                .unwrap()
                .0,
            big
        );
    }

    #[test]
    fn a_frame_buffer_grows_with_arrivals_and_pays_from_the_budget() {
        let budget = Arc::new(Semaphore::new(100_000));
        let len = 1 << 20;
        let mut g = Growing {
            buf: Vec::new(),
            reserved: 0,
            paid: None,
            paid_share: None,
        };
        // Ten bytes of a 1 MiB frame: one small first step.
        g.reserve(10, len, Some(&budget), None).unwrap();
        g.buf.extend_from_slice(&[0; 10]);
        assert_eq!(g.reserved, FIRST_BUFFER_BYTES);
        assert_eq!(budget.available_permits(), 100_000 - FIRST_BUFFER_BYTES);
        // Growth at least doubles, and stops at what the budget can pay.
        g.reserve(FIRST_BUFFER_BYTES, len, Some(&budget), None)
            .unwrap();
        assert_eq!(g.reserved, 2 * FIRST_BUFFER_BYTES);
        g.buf.resize(2 * FIRST_BUFFER_BYTES, 0);
        assert!(matches!(
            g.reserve(200_000, len, Some(&budget), None),
            Err(FrameError::OverBudget { .. })
        ));
        // Never beyond the announced length.
        let mut small = Growing {
            buf: Vec::new(),
            reserved: 0,
            paid: None,
            paid_share: None,
        };
        small.reserve(3, 5, Some(&budget), None).unwrap();
        assert_eq!(small.reserved, 5);
        // Everything returns when the frames go.
        drop((g, small));
        assert_eq!(budget.available_permits(), 100_000);
    }

    #[test]
    fn a_frame_pays_its_connections_share_too_and_a_share_runs_out_first() {
        let budget = Arc::new(Semaphore::new(100_000));
        let share = Arc::new(Semaphore::new(3 * FIRST_BUFFER_BYTES));
        let len = 1 << 20;
        let grow = || Growing {
            buf: Vec::new(),
            reserved: 0,
            paid: None,
            paid_share: None,
        };
        let (mut a, mut b, mut c) = (grow(), grow(), grow());
        for g in [&mut a, &mut b, &mut c] {
            g.reserve(10, len, Some(&budget), Some(&share)).unwrap();
        }
        assert_eq!(share.available_permits(), 0);
        assert_eq!(budget.available_permits(), 100_000 - 3 * FIRST_BUFFER_BYTES);
        // The share is spent: refused, though the budget could pay, and
        // nothing is taken from either.
        let mut d = grow();
        assert!(matches!(
            d.reserve(10, len, Some(&budget), Some(&share)),
            Err(FrameError::OverBudget { .. })
        ));
        assert_eq!(budget.available_permits(), 100_000 - 3 * FIRST_BUFFER_BYTES);
        // Another connection's share is its own.
        let other = Arc::new(Semaphore::new(FIRST_BUFFER_BYTES));
        d.reserve(10, len, Some(&budget), Some(&other)).unwrap();
        // A budget that cannot pay leaves the share as it was.
        let tight = Arc::new(Semaphore::new(1));
        let roomy = Arc::new(Semaphore::new(100_000));
        let mut e = grow();
        assert!(e.reserve(10, len, Some(&tight), Some(&roomy)).is_err());
        assert_eq!(roomy.available_permits(), 100_000);
        drop((a, b, c, d, e));
        assert_eq!(share.available_permits(), 3 * FIRST_BUFFER_BYTES);
        assert_eq!(other.available_permits(), FIRST_BUFFER_BYTES);
        assert_eq!(budget.available_permits(), 100_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// Arbitrary bytes never panic the decoder; they decode, wait, or are refused.
        #[test]
        fn garbage_never_panics_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Message>(&bytes, MAX_FRAME_BYTES);
            let _ = decode_body::<Message>(&bytes);
        }

        /// Flipping a byte of a valid frame never panics either.
        #[test]
        fn damaged_frames_never_panic(at in 0usize..64, bit in 0u8..8) {
            let mut buf = Vec::new();
            encode(&msg(), &mut buf).unwrap();
            let at = at % buf.len();
            buf[at] ^= 1 << bit;
            let _ = decode::<Message>(&buf, MAX_FRAME_BYTES);
        }
    }
}
