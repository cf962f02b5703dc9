//! The write-ahead log: round trips, torn tails, corruption, truncation,
//! compaction, write failures, and a property test against the in-memory
//! store as the reference model.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ha_core::rng::SplitMix64;
use ha_core::storage::wal::{
    MAX_COMMAND_BYTES, MAX_RECORD_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_PREFIX_BYTES,
};
use ha_core::storage::{
    LogStore, MemLogStore, SimFs, StdFs, Vfs, VfsFile, Wal, WalError, WalOptions,
};
use ha_core::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};
use proptest::prelude::*;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: EntryPayload::Command(Bytes::from(format!("cmd-{index}-{term}"))),
    }
}

fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to).map(|i| entry(i, term)).collect()
}

fn hs(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/data/wal")
}

fn small_segments() -> WalOptions {
    WalOptions::with_segment_max_bytes(512)
}

fn segment_files<V: Vfs>(vfs: &V, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = vfs
        .list(dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("wal-"))
        .map(|n| dir.join(n))
        .collect();
    v.sort();
    v
}

mod acknowledged;
mod basics;
mod limits;
mod model;
mod repair;
use limits::*;
