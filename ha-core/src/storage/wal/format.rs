//! The on-disk format: segment names and headers, record encoding and
//! decoding, and the checks a batch start must pass to be bound to its place.
//!
//! Invariants: every record is length-prefixed and checksummed; a length is
//! checked against the buffer before it is used; nothing here does IO.

use super::*;

/// Where the log stands.
#[derive(Clone, Copy, Debug)]
pub(super) struct Position {
    pub(super) last_index: LogIndex,
    pub(super) last_term: Term,
    pub(super) snapshot: (LogIndex, Term),
    pub(super) hard_state: HardState,
}

pub(super) fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A version 2 segment's prefix: header and guard (see
/// [`SEGMENT_PREFIX_BYTES`]).
pub(super) fn segment_prefix(seq: u64) -> Vec<u8> {
    let mut h = vec![0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&downgrade_guard());
    h
}

/// The guard record: a version 1 batch start of an empty batch.
pub(super) fn downgrade_guard() -> Vec<u8> {
    let mut g = Vec::with_capacity(RECORD_HEADER_BYTES + 4);
    put_record(&mut g, KIND_BATCH_START, 0, 0, &0u32.to_le_bytes())
        .expect("a 4-byte payload is within the record limit");
    g
}

/// Checks a segment header; returns the segment's format version (1 or 2).
pub(super) fn check_segment_header(buf: &[u8], seq: u64) -> Result<u8, String> {
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Err(format!("segment header is short ({} bytes)", buf.len()));
    }
    let version = if buf[..8] == SEGMENT_MAGIC {
        2
    } else if buf[..8] == SEGMENT_MAGIC_V1 {
        1
    } else {
        return Err("not a write-ahead log segment (bad magic or format version)".into());
    };
    let crc = u32::from_le_bytes(buf[24..28].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&buf[..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let got = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    if got != seq {
        return Err(format!(
            "segment header names sequence {got}, file name says {seq}"
        ));
    }
    if version == 2
        && buf.get(SEGMENT_HEADER_BYTES..SEGMENT_PREFIX_BYTES) != Some(&downgrade_guard()[..])
    {
        return Err("segment header's guard record is missing or damaged".into());
    }
    Ok(version)
}

/// Appends one record to `out`; refuses (appending nothing) one whose length
/// field would exceed [`MAX_RECORD_BYTES`].
pub(super) fn put_record(
    out: &mut Vec<u8>,
    kind: u8,
    index: u64,
    term: u64,
    payload: &[u8],
) -> Result<(), WalError> {
    let too_large = || WalError::RecordTooLarge {
        index: LogIndex(index),
        bytes: RECORD_FIXED_BYTES.saturating_add(payload.len()),
        max: MAX_RECORD_BYTES,
    };
    let len = RECORD_FIXED_BYTES
        .checked_add(payload.len())
        .filter(|l| *l <= MAX_RECORD_BYTES)
        .ok_or_else(too_large)?;
    let len = u32::try_from(len).map_err(|_| too_large())?;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

pub(super) fn encode_hard_state(hs: HardState, out: &mut Vec<u8>) -> Result<(), WalError> {
    let vote = hs.vote.map_or(0, |v| v.0).to_le_bytes();
    put_record(out, KIND_HARD_STATE, hs.commit.0, hs.term.0, &vote)
}

/// Encodes an entry payload; fails only for a membership set whose size does
/// not fit its u32 count.
pub(super) fn encode_payload(p: &EntryPayload, out: &mut Vec<u8>) -> Result<(), String> {
    match p {
        EntryPayload::Blank => out.push(PAYLOAD_BLANK),
        EntryPayload::Command(b) => {
            out.push(PAYLOAD_COMMAND);
            out.extend_from_slice(b);
        }
        EntryPayload::Membership(m) => {
            out.push(PAYLOAD_MEMBERSHIP);
            m.encode_into(out)?;
        }
    }
    Ok(())
}

/// Where the batch that starts at `from` in `records` (whole records, as
/// `put_record` wrote them) ends: as many records as fit in `limit` bytes,
/// and at least one.
pub(super) fn batch_end(records: &[u8], from: usize, limit: usize) -> usize {
    let mut end = from;
    while let Some(len) = records.get(end..end + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let size = 8 + len;
        if end > from && end - from + size > limit {
            break;
        }
        end = (end + size).min(records.len());
    }
    if end == from { records.len() } else { end }
}

pub(super) fn decode_payload(b: &[u8]) -> Result<EntryPayload, String> {
    let (&tag, rest) = b.split_first().ok_or("empty entry payload")?;
    match tag {
        PAYLOAD_BLANK if rest.is_empty() => Ok(EntryPayload::Blank),
        PAYLOAD_COMMAND => Ok(EntryPayload::Command(bytes::Bytes::copy_from_slice(rest))),
        PAYLOAD_MEMBERSHIP => Membership::decode(rest)
            .map(EntryPayload::Membership)
            .map_err(|e| format!("membership payload: {e}")),
        t => Err(format!("unknown entry payload tag {t}")),
    }
}

/// One decoded record.
pub(super) struct Record<'a> {
    pub(super) kind: u8,
    pub(super) index: u64,
    pub(super) term: u64,
    pub(super) payload: &'a [u8],
}

/// Decodes the record at `pos`; returns it and the offset after it.
pub(super) fn read_record(buf: &[u8], pos: usize) -> Result<(Record<'_>, usize), String> {
    let header = buf.get(pos..pos + 8).ok_or("record header is cut short")?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if !(RECORD_FIXED_BYTES..=MAX_RECORD_BYTES).contains(&len) {
        return Err(format!("record length {len} is out of range"));
    }
    let body = buf
        .get(pos + 8..pos + 8 + len)
        .ok_or("record is cut short")?;
    if crc32c::crc32c(body) != crc {
        return Err("record checksum mismatch".into());
    }
    let rec = Record {
        kind: body[0],
        index: u64::from_le_bytes(body[1..9].try_into().expect("8 bytes")),
        term: u64::from_le_bytes(body[9..17].try_into().expect("8 bytes")),
        payload: &body[RECORD_FIXED_BYTES..],
    };
    Ok((rec, pos + 8 + len))
}

/// Whether `buf[from..to]` overlaps a 512-byte sector (aligned to file
/// offsets) that is all zeros, within the file.
pub(super) fn has_zero_sector(buf: &[u8], from: usize, to: usize) -> bool {
    let to = to.min(buf.len());
    let mut sector = from - from % SECTOR_BYTES;
    while sector < to {
        let end = (sector + SECTOR_BYTES).min(buf.len());
        if buf[sector..end].iter().all(|b| *b == 0) {
            return true;
        }
        sector += SECTOR_BYTES;
    }
    false
}

/// A version 2 batch start bound to offset `at` of segment `seq`: its
/// batch length and its own CRC, or `None` if the bytes there are not one.
/// The offset and sequence inside the record make a batch start copied
/// into a command's bytes (or anywhere else) fail this check.
pub(super) fn bound_batch_start(buf: &[u8], at: usize, seq: u64) -> Option<(usize, u32)> {
    let (r, _) = read_record(buf, at).ok()?;
    if r.kind != KIND_BATCH_START
        || r.index != at as u64
        || r.term != seq
        || r.payload.len() != BATCH_START_V2_PAYLOAD
    {
        return None;
    }
    let len = u32::from_le_bytes(r.payload[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
    Some((len, crc))
}

/// Whether a version 2 batch start bound to its own offset begins anywhere
/// after `from`: then the bytes at `from` were followed by a later write,
/// so they were synced, and damage there is not a torn tail.
pub(super) fn bound_batch_start_after(buf: &[u8], from: usize, seq: u64, planted: Planted) -> bool {
    let want = ((RECORD_FIXED_BYTES + BATCH_START_V2_PAYLOAD) as u32).to_le_bytes();
    (from + 1..buf.len().saturating_sub(BATCH_START_V2_BYTES - 1)).any(|p| {
        buf[p..p + 4] == want
            && buf[p + 8] == KIND_BATCH_START
            && (bound_batch_start(buf, p, seq).is_some()
                || (planted.unbound_batch_start
                    && read_record(buf, p).is_ok_and(|(r, _)| r.kind == KIND_BATCH_START)))
    })
}

/// Whether a version 1 batch start record begins anywhere after `from`
/// (the version 1 rule; its batch starts are not bound to their place).
pub(super) fn v1_batch_start_after(buf: &[u8], from: usize) -> bool {
    let want_len = (RECORD_FIXED_BYTES + 4) as u32;
    (from + 1..buf.len().saturating_sub(RECORD_HEADER_BYTES)).any(|p| {
        buf[p..p + 4] == want_len.to_le_bytes()
            && buf.get(p + 8) == Some(&KIND_BATCH_START)
            && read_record(buf, p).is_ok()
    })
}
