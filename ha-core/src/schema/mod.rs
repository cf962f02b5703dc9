//! Structural fingerprints of replicated types: what a node's log,
//! snapshots and peers hold, described by the shape postcard reads.
//!
//! Owns: tracing a type's *wire shape* through its serde `Deserialize`
//! impl (the very calls postcard's decoder makes, so nested types, serde
//! attributes and hand-written impls are all seen), the canonical text of
//! that shape ([`shape_of`]), and the two fingerprints of a replicated type
//! ([`Schema`]).
//!
//! Contents are traced per place (an enclosing container and the steps from
//! it), never per serde name: serde names every instance of a generic type
//! alike. A type met again inside itself is traced once more, then referred
//! back to (`^n`: the container `n` levels up); so a generic type nested
//! three deep in itself is taken for recursion.
//!
//! The canonical text names, recursively through every nested type:
//! each integer's width and signedness, floats, `bool`, `char`, strings,
//! byte strings, options, sequences, maps, tuples and arrays, the field
//! names of structs and struct variants, and the names and order of enum
//! variants. It does not name types or paths (`Vec<u8>` and
//! `std::vec::Vec<u8>` are one shape), wrappers the wire never sees
//! (`Box`, newtype structs, `Vec<u8>` versus a byte buffer), doc comments
//! or spacing, and, in the command and query enums, argument names: Rust
//! binds arguments by position, as postcard does.
//!
//! Invariants:
//! 1. Two types have equal shape text exactly when postcard encodes their
//!    values the same way and they name the same fields and variants in the
//!    same order (modulo the wrappers above). The text depends on no
//!    compiler's token printer: it is built from serde's data model only.
//! 2. Tracing never calls anything but the type's `Deserialize` impl, and
//!    ends: every pass either learns something new or tracing stops with
//!    an error (and passes are capped at [`MAX_PASSES`]).
//! 3. A type postcard cannot decode (`deserialize_any`: `#[serde(flatten)]`,
//!    untagged or internally tagged enums) fails to trace with an error
//!    that says so, before any node starts with it.
//!
//! How tracing works. A pass deserializes one value of the type from a
//! tracing deserializer that answers every request with a small value and
//! records what was asked. An enum answers with one variant per pass, so
//! passes repeat until every variant of every enum reached has been seen.
//! A type that contains itself is entered at most twice on one path: the
//! second time an enum picks a variant that does not recurse, a sequence
//! or map is empty, an option is `None`; what had to be learned for that
//! (an option or map that must be empty, a variant that recurses) is kept
//! between passes.

mod facts;
mod tracer;
use self::facts::*;
use self::tracer::*;

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use serde::Serialize;

use crate::sm::{Replicated, decode_exact};

/// Passes one trace may take before it gives up (invariant 2).
pub const MAX_PASSES: usize = 100_000;

/// Version of what ha itself stores around the user's types (the session
/// table, the snapshot envelope): part of the stored fingerprint.
const STORED_TAG: &str = "ha-stored/1";
/// Version of the query envelope: part of the query fingerprint.
const QUERY_TAG: &str = "ha-query/1";

/// Why a type's shape could not be traced.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot trace the wire shape of `{type_name}`: {reason}")]
pub struct SchemaError {
    /// The Rust type traced.
    pub type_name: &'static str,
    /// What went wrong.
    pub reason: String,
}

crate::debug_as_display!(SchemaError);

/// The fingerprints of a replicated type `T`.
///
/// - **stored**: the shapes of `T`'s commands (what the log holds), their
///   outputs (kept in the session table for retries) and its state (what
///   snapshots hold). A data directory, a snapshot, a peer and a client's
///   commands are refused unless their stored fingerprint is this build's.
/// - **query**: the shapes of `T`'s queries and their outputs. Queries are
///   never logged or stored, so only clients' queries are checked against
///   it: adding a query changes nothing a node keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    stored: u64,
    query: u64,
    stored_shape: String,
    query_shape: String,
}

impl Schema {
    /// The schema of `T`, traced once per process and then cached. An
    /// error means `T` (or a type inside it) cannot be decoded by postcard
    /// or cannot be traced; it is the same every time.
    pub fn of<T: Replicated>() -> Result<&'static Schema, SchemaError> {
        static CACHE: Mutex<Option<HashMap<TypeId, &'static Schema>>> = Mutex::new(None);
        let id = TypeId::of::<T>();
        if let Some(s) = CACHE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .get(&id)
        {
            return Ok(s);
        }
        // Traced outside the lock: a trace runs user code (Deserialize
        // impls), which must not deadlock or poison the cache.
        let stored_shape = format!(
            "{STORED_TAG} envelope={} commands={} outputs={} state={}",
            crate::sm::envelope_shape()?,
            trace::<T::Command>(true)?,
            trace::<T::CommandOutput>(false)?,
            T::state_shape()?,
        );
        let query_shape = format!(
            "{QUERY_TAG} queries={} outputs={}",
            trace::<T::Query>(true)?,
            trace::<T::QueryOutput>(false)?,
        );
        let schema = Schema {
            stored: fingerprint(&stored_shape),
            query: fingerprint(&query_shape),
            stored_shape,
            query_shape,
        };
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let map = cache.get_or_insert_with(HashMap::new);
        // Bounded by the number of replicated types in the program.
        let s: &'static Schema = map.entry(id).or_insert_with(|| Box::leak(Box::new(schema)));
        Ok(s)
    }

    /// The stored fingerprint (never 0: 0 marks raw, untyped data).
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// The query fingerprint (never 0).
    pub fn query(&self) -> u64 {
        self.query
    }

    /// The canonical text the stored fingerprint hashes.
    pub fn stored_shape(&self) -> &str {
        &self.stored_shape
    }

    /// The canonical text the query fingerprint hashes.
    pub fn query_shape(&self) -> &str {
        &self.query_shape
    }
}

/// The canonical shape text of `T` (see the module docs).
pub fn shape_of<T: Serialize + DeserializeOwned>() -> Result<String, SchemaError> {
    trace::<T>(false)
}

/// Encodes `v`, decodes the bytes exactly, and encodes the result again:
/// the two encodings must be equal.
fn round_trip<T: Serialize + DeserializeOwned>(v: &T) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let first = postcard::to_stdvec(v).map_err(|e| format!("encoding failed: {e}"))?;
        let back: T = decode_exact(&first).map_err(|e| format!("decoding failed: {e}"))?;
        let second = postcard::to_stdvec(&back).map_err(|e| format!("encoding failed: {e}"))?;
        if first == second {
            Ok(())
        } else {
            Err("a second encoding differs".to_string())
        }
    }))
    .unwrap_or_else(|_| Err("encoding or decoding panicked".to_string()))
}

/// A field or variant name as the canonical text writes it: plain
/// identifiers as they are, anything else (a `#[serde(rename)]` with
/// punctuation) quoted, so no name can forge the text's structure.
fn name(n: &str) -> String {
    let plain = !n.is_empty()
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        return n.to_string();
    }
    // Escaped by hand, not by `{:?}`: its escaping follows the standard
    // library's Unicode tables, which may change between toolchains.
    let mut out = String::from("\"");
    for c in n.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `std`'s
/// hasher. Never 0: 0 marks raw, untyped data.
pub(crate) fn fingerprint(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    if h == 0 { 1 } else { h }
}

/// Traces `T` and renders its canonical text. `positional`: the root is a
/// generated command or query enum, whose struct variants' field names are
/// the methods' argument names, left out.
fn trace<T: Serialize + DeserializeOwned>(positional: bool) -> Result<String, SchemaError> {
    let type_name = std::any::type_name::<T>();
    let err = |reason: String| SchemaError { type_name, reason };
    let ctx = RefCell::new(Ctx::default());
    let mut root = Format::Unknown;
    for _ in 0..MAX_PASSES {
        {
            let mut c = ctx.borrow_mut();
            c.stack.clear();
            c.progress = false;
            c.last = Format::Unknown;
        }
        // A user's Deserialize impl may panic on a traced value: an error,
        // never the end of the node or client asking.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            T::deserialize(Tracer {
                ctx: &ctx,
                pos: Pos::default(),
            })
        }))
        .map_err(|_| err("its Deserialize impl panicked on a traced value".into()))?;
        if ctx.try_borrow_mut().is_err() {
            return Err(err("tracing was interrupted".into()));
        }
        // Only decoding is traced: a value must also encode to bytes that
        // decode back to an equal encoding, or its Serialize impl writes
        // another shape (`skip_serializing_if`, `skip_deserializing`, an
        // asymmetric `serialize_with`) than the fingerprint describes.
        if let Ok(v) = &result
            && let Err(why) = round_trip(v)
        {
            return Err(err(format!(
                "its Serialize and Deserialize impls disagree ({why}): a value it writes does \
                 not read back the same"
            )));
        }
        let mut c = ctx.borrow_mut();
        let got = std::mem::replace(&mut c.last, Format::Unknown);
        let merged = merge(&root, &got).ok_or_else(|| {
            err(
                "its shape differs from one trace to the next (a Deserialize impl that is \
                 not a function of the type)"
                    .into(),
            )
        })?;
        if merged != root {
            c.progress = true;
            root = merged;
        }
        match result {
            Ok(_) => {}
            Err(TraceError::Recursion { handled: true } | TraceError::Retry) => {}
            Err(TraceError::Recursion { handled: false }) => {
                // An uninhabited root (an enum with no variants: a type
                // with no commands) has a shape but no value.
                let empty_root = matches!(&root, Format::Ref(k)
                    if matches!(c.contents.get(k), Some(Content::Variants(v)) if v.is_empty()));
                if !empty_root {
                    return Err(err(
                        "no value of it can be built: a type inside it contains \
                                    itself with no `Option`, collection or other enum variant \
                                    on the way, or is an enum with no variants"
                            .into(),
                    ));
                }
            }
            Err(TraceError::Other(reason)) => return Err(err(reason)),
        }
        if let Some(missing) = c.incomplete(&root) {
            if !c.progress {
                return Err(err(format!("{missing} could not be reached by tracing")));
            }
            continue;
        }
        let mut out = String::new();
        c.render(&root, &mut Vec::new(), positional, &mut out);
        // One more value for the round trip: every option `None`, every
        // collection empty (what `skip_serializing_if` skips). A type that
        // cannot be built so (it wants a non-empty collection) skips it.
        c.minimal = true;
        c.stack.clear();
        drop(c);
        let minimal = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            T::deserialize(Tracer {
                ctx: &ctx,
                pos: Pos::default(),
            })
        }));
        if let Ok(Ok(v)) = minimal
            && let Err(why) = round_trip(&v)
        {
            return Err(err(format!(
                "its Serialize and Deserialize impls disagree ({why}): a value it writes does \
                 not read back the same"
            )));
        }
        return Ok(out);
    }
    Err(err(format!("tracing took more than {MAX_PASSES} passes")))
}
