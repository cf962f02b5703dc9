//! Framing: postcard messages behind a length prefix, with a hard size cap.
//!
//! Owns: the wire format of every QUIC stream in ha:
//!
//! ```text
//! frame = length: u32 little-endian | postcard bytes (exactly `length`)
//! ```
//!
//! Invariants:
//! 1. A length above the stream's cap is refused before anything is
//!    allocated for it.
//! 2. A frame decodes to exactly one value with no bytes left over, or it is
//!    refused; nothing from a refused frame is acted on.
//! 3. A stream that ends inside a frame is an error (truncation), one that
//!    ends between frames is a clean end.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest frame any stream accepts.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Largest frame on the control stream (votes, heartbeats, responses).
pub const MAX_CONTROL_FRAME_BYTES: usize = 64 << 10;
const PREFIX: usize = 4;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
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
}

/// Appends `msg` as one frame to `out`.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX]);
    let out2 = postcard::to_extend(msg, std::mem::take(out))
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    *out = out2;
    let len = out.len() - start - PREFIX;
    if len > MAX_FRAME_BYTES {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
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

/// Reads one frame from a QUIC stream; `Ok(None)` at a clean end of stream.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<T>, FrameError> {
    let mut prefix = [0u8; PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Stream(e.to_string())),
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => decode_body(&body).map(Some),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => Err(FrameError::Stream(e.to_string())),
    }
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
