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
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot trace the wire shape of `{type_name}`: {reason}")]
pub struct SchemaError {
    /// The Rust type traced.
    pub type_name: &'static str,
    /// What went wrong.
    pub reason: String,
}

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

/// The shape of one value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Format {
    /// Not seen yet.
    #[default]
    Unknown,
    /// A primitive, by its canonical name.
    Prim(&'static str),
    Option(Box<Format>),
    Seq(Box<Format>),
    Map(Box<Format>, Box<Format>),
    /// Tuples and fixed-size arrays.
    Tuple(Vec<Format>),
    /// A named container at one place, whose content is kept in
    /// [`Ctx::contents`].
    Ref(Key),
    /// A container of this type already twice among the enclosing ones:
    /// taken for recursion, rendered as a back reference.
    Back(TypeKey),
}

/// A container type as serde names it. serde gives every instance of a
/// generic type one name (`Result<u64, E>` and `Result<String, E>` are both
/// "Result"), so a name identifies no type: contents are kept per place
/// ([`Key`]), and a name only tells recursion apart (a type found twice
/// among its own enclosing containers; a generic type nested three deep in
/// itself is taken for recursion too).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TypeKey {
    Struct(&'static str, &'static [&'static str]),
    TupleStruct(&'static str, usize),
    Newtype(&'static str),
    Enum(&'static str, &'static [&'static str]),
}

impl TypeKey {
    fn describe(&self) -> String {
        match self {
            TypeKey::Struct(n, _) | TypeKey::TupleStruct(n, _) | TypeKey::Newtype(n) => {
                format!("the struct `{n}`")
            }
            TypeKey::Enum(n, _) => format!("the enum `{n}`"),
        }
    }
}

/// A container at one place: its type and where it sits (the enclosing
/// container's key and the steps from it), so two instances of one generic
/// type in two places are traced apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    ty: TypeKey,
    at: Box<Pos>,
}

impl Key {
    fn describe(&self) -> String {
        self.ty.describe()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Content {
    /// Struct or tuple struct fields, in order (names are in the key).
    Fields(Vec<Format>),
    Newtype(Format),
    /// Per variant index; `None` until traced.
    Variants(Vec<Option<Variant>>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Variant {
    Unit,
    Newtype(Format),
    Tuple(Vec<Format>),
    Struct(&'static [&'static str], Vec<Format>),
}

/// One step from a container (or the root) down to a value inside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Field(usize),
    Variant(u32),
    Some,
    Elem,
    Key,
    Value,
}

/// Where a value sits: relative to its innermost container, so what is
/// learned about a place holds wherever the container appears.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    container: Option<Key>,
    steps: Vec<Step>,
}

impl Pos {
    fn child(&self, step: Step) -> Pos {
        let mut p = self.clone();
        p.steps.push(step);
        p
    }
    fn inside(key: &Key) -> Pos {
        Pos {
            container: Some(key.clone()),
            steps: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Ctx {
    contents: BTreeMap<Key, Content>,
    /// Containers entered on the current path.
    stack: Vec<Key>,
    /// Options and maps that must be empty (their inner value recursed),
    /// with their shape as learned.
    empty: BTreeMap<Pos, Format>,
    /// Enum variants that recurse: not chosen when the enum is re-entered.
    recursive: BTreeSet<(Key, u32)>,
    /// Primitives whose first answer a `Deserialize` impl refused: which
    /// candidate to answer instead.
    alt: BTreeMap<Pos, usize>,
    /// Whether this pass learned anything.
    progress: bool,
    /// The last pass: options `None`, sequences and maps empty (a second
    /// value for the round trip; see `trace`).
    minimal: bool,
    /// The shape of the value the last finished request produced.
    last: Format,
}

impl Ctx {
    fn entered(&self, ty: &TypeKey) -> usize {
        self.stack.iter().filter(|k| k.ty == *ty).count()
    }

    /// Records a container's content (or one enum variant's).
    fn record(&mut self, key: &Key, content: Content) -> Result<(), TraceError> {
        let conflict = || {
            TraceError::Other(format!(
                "two different types are both {}, with the same field or variant names but \
                 different shapes: rename one (or use `#[serde(rename)]`)",
                key.describe()
            ))
        };
        let merged = match (self.contents.get(key), content) {
            (None, c) => c,
            (Some(Content::Fields(a)), Content::Fields(b)) => {
                Content::Fields(merge_all(a, &b).ok_or_else(conflict)?)
            }
            (Some(Content::Newtype(a)), Content::Newtype(b)) => {
                Content::Newtype(merge(a, &b).ok_or_else(conflict)?)
            }
            (Some(Content::Variants(a)), Content::Variants(b)) if a.len() == b.len() => {
                let mut out = Vec::with_capacity(a.len());
                for (x, y) in a.iter().zip(b) {
                    out.push(match (x, y) {
                        (None, y) => y,
                        (x, None) => x.clone(),
                        (Some(x), Some(y)) => Some(merge_variant(x, &y).ok_or_else(conflict)?),
                    });
                }
                Content::Variants(out)
            }
            _ => return Err(conflict()),
        };
        if self.contents.get(key) != Some(&merged) {
            self.progress = true;
            self.contents.insert(key.clone(), merged);
        }
        Ok(())
    }

    /// Something in `f` not traced yet, described; `None` if complete.
    fn incomplete(&self, f: &Format) -> Option<String> {
        self.incomplete_in(f, &mut BTreeSet::new(), &mut Vec::new())
    }

    /// `types`: the container types enclosing `f`. A place of one of them
    /// that was never traced, or a variant of it that recursed there, is
    /// recursion: complete (rendered as a back reference).
    fn incomplete_in(
        &self,
        f: &Format,
        seen: &mut BTreeSet<Key>,
        types: &mut Vec<TypeKey>,
    ) -> Option<String> {
        match f {
            Format::Unknown => Some("a value inside the type".into()),
            Format::Prim(_) | Format::Back(_) => None,
            Format::Option(x) | Format::Seq(x) => self.incomplete_in(x, seen, types),
            Format::Map(k, v) => self
                .incomplete_in(k, seen, types)
                .or_else(|| self.incomplete_in(v, seen, types)),
            Format::Tuple(xs) => xs.iter().find_map(|x| self.incomplete_in(x, seen, types)),
            Format::Ref(key) => {
                if !seen.insert(key.clone()) {
                    return None;
                }
                let recursion = types.contains(&key.ty);
                types.push(key.ty.clone());
                let found = match self.contents.get(key) {
                    None if recursion => None,
                    None => Some(key.describe()),
                    Some(Content::Fields(xs)) => {
                        xs.iter().find_map(|x| self.incomplete_in(x, seen, types))
                    }
                    Some(Content::Newtype(x)) => self.incomplete_in(x, seen, types),
                    Some(Content::Variants(vs)) => {
                        vs.iter().enumerate().find_map(|(i, v)| match v {
                            None if recursion && self.recursed(key, i) => None,
                            None => Some(format!(
                                "variant {} of {}",
                                variant_name(key, i),
                                key.describe()
                            )),
                            Some(v) => variant_formats(v)
                                .iter()
                                .find_map(|x| self.incomplete_in(x, seen, types)),
                        })
                    }
                };
                types.pop();
                found
            }
        }
    }

    fn recursed(&self, key: &Key, variant: usize) -> bool {
        self.recursive.contains(&(key.clone(), variant as u32))
    }

    /// The variant an enum answers with this time (see the module docs).
    fn choose(&self, key: &Key, count: usize) -> Result<u32, TraceError> {
        let TypeKey::Enum(_, names) = key.ty else {
            return Err(TraceError::Other("only enums choose a variant".into()));
        };
        let n = names.len() as u32;
        let known = match self.contents.get(key) {
            Some(Content::Variants(v)) => Some(v),
            _ => None,
        };
        if count == 0 {
            // First a variant never seen, then one leading to something
            // not traced yet, then any.
            if let Some(v) = (0..n).find(|&v| known.is_none_or(|k| k[v as usize].is_none())) {
                return Ok(v);
            }
            if let Some(k) = known
                && let Some(v) = (0..n).find(|&v| {
                    k[v as usize].as_ref().is_some_and(|var| {
                        variant_formats(var)
                            .iter()
                            .any(|f| self.incomplete(f).is_some())
                    })
                })
            {
                return Ok(v);
            }
        }
        // Re-entered (or all seen): a variant that does not recurse, one
        // never seen here first.
        let unseen = |v: u32| known.is_none_or(|k| k[v as usize].is_none());
        (0..n)
            .filter(|&v| !self.recursed(key, v as usize))
            .min_by_key(|&v| (!unseen(v), v))
            .ok_or_else(|| {
                TraceError::Other(format!(
                    "every variant of {} contains it again, so no value of it can be built",
                    key.describe()
                ))
            })
    }

    fn render(&self, f: &Format, stack: &mut Vec<TypeKey>, positional: bool, out: &mut String) {
        match f {
            Format::Unknown => out.push('?'),
            Format::Prim(p) => out.push_str(p),
            Format::Option(x) => {
                out.push_str("option<");
                self.render(x, stack, false, out);
                out.push('>');
            }
            Format::Seq(x) => {
                let mut inner = String::new();
                self.render(x, stack, false, &mut inner);
                if inner == "u8" {
                    // postcard writes a `Vec<u8>` as it writes bytes.
                    out.push_str("bytes");
                } else {
                    out.push_str("seq<");
                    out.push_str(&inner);
                    out.push('>');
                }
            }
            Format::Map(k, v) => {
                out.push_str("map<");
                self.render(k, stack, false, out);
                out.push(',');
                self.render(v, stack, false, out);
                out.push('>');
            }
            Format::Tuple(xs) => self.render_tuple(xs, stack, out),
            Format::Back(ty) => {
                // A type inside itself: how many containers up.
                match stack.iter().rposition(|k| k == ty) {
                    Some(at) => out.push_str(&format!("^{}", stack.len() - at)),
                    None => out.push('?'),
                }
            }
            Format::Ref(key) if !self.contents.contains_key(key) => {
                // Never traced at this place: recursion (see `incomplete`).
                self.render(&Format::Back(key.ty.clone()), stack, positional, out)
            }
            Format::Ref(key) => {
                let back = stack
                    .iter()
                    .rposition(|k| *k == key.ty)
                    .map(|at| stack.len() - at);
                stack.push(key.ty.clone());
                match (&key.ty, self.contents.get(key)) {
                    (TypeKey::Struct(_, names), Some(Content::Fields(xs))) => {
                        self.render_fields(names, xs, stack, out);
                    }
                    (_, Some(Content::Fields(xs))) => self.render_tuple(xs, stack, out),
                    (_, Some(Content::Newtype(x))) => self.render(x, stack, false, out),
                    (TypeKey::Enum(_, names), Some(Content::Variants(vs))) => {
                        out.push_str("enum{");
                        for (i, v) in vs.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            out.push_str(&name(names.get(i).copied().unwrap_or("?")));
                            match v {
                                // A variant that recursed where the type
                                // re-entered itself: as in the enclosing one.
                                None => match back {
                                    Some(n) => out.push_str(&format!("^{n}")),
                                    None => out.push('?'),
                                },
                                Some(Variant::Unit) => {}
                                Some(Variant::Newtype(x)) => {
                                    self.render_list(std::slice::from_ref(x), stack, out)
                                }
                                Some(Variant::Tuple(xs)) => self.render_list(xs, stack, out),
                                Some(Variant::Struct(_, xs)) if positional => {
                                    self.render_list(xs, stack, out)
                                }
                                Some(Variant::Struct(fields, xs)) => {
                                    self.render_fields(fields, xs, stack, out)
                                }
                            }
                        }
                        out.push('}');
                    }
                    _ => out.push('?'),
                }
                stack.pop();
            }
        }
    }

    fn render_parts(&self, xs: &[Format], stack: &mut Vec<TypeKey>) -> Vec<String> {
        xs.iter()
            .map(|x| {
                let mut s = String::new();
                self.render(x, stack, false, &mut s);
                s
            })
            .collect()
    }

    /// `(a,b)`, or `[a;n]` when all are alike (postcard writes tuples and
    /// arrays alike: each element in turn, no length).
    fn render_tuple(&self, xs: &[Format], stack: &mut Vec<TypeKey>, out: &mut String) {
        let parts = self.render_parts(xs, stack);
        if parts.len() > 1 && parts.iter().all(|p| *p == parts[0]) {
            out.push_str(&format!("[{};{}]", parts[0], parts.len()));
        } else {
            out.push('(');
            out.push_str(&parts.join(","));
            out.push(')');
        }
    }

    /// A variant's fields by position: `(a,b)`.
    fn render_list(&self, xs: &[Format], stack: &mut Vec<TypeKey>, out: &mut String) {
        out.push('(');
        out.push_str(&self.render_parts(xs, stack).join(","));
        out.push(')');
    }

    fn render_fields(
        &self,
        names: &[&str],
        xs: &[Format],
        stack: &mut Vec<TypeKey>,
        out: &mut String,
    ) {
        out.push('{');
        for (i, x) in xs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&name(names.get(i).copied().unwrap_or("?")));
            out.push(':');
            self.render(x, stack, false, out);
        }
        out.push('}');
    }
}

fn variant_name(key: &Key, i: usize) -> &'static str {
    match key.ty {
        TypeKey::Enum(_, names) => names.get(i).copied().unwrap_or("?"),
        _ => "?",
    }
}

fn variant_formats(v: &Variant) -> Vec<Format> {
    match v {
        Variant::Unit => Vec::new(),
        Variant::Newtype(f) => vec![f.clone()],
        Variant::Tuple(fs) | Variant::Struct(_, fs) => fs.clone(),
    }
}

fn merge(a: &Format, b: &Format) -> Option<Format> {
    Some(match (a, b) {
        (Format::Unknown, x) | (x, Format::Unknown) => x.clone(),
        (Format::Prim(x), Format::Prim(y)) if x == y => a.clone(),
        (Format::Option(x), Format::Option(y)) => Format::Option(Box::new(merge(x, y)?)),
        (Format::Seq(x), Format::Seq(y)) => Format::Seq(Box::new(merge(x, y)?)),
        (Format::Map(k, v), Format::Map(k2, v2)) => {
            Format::Map(Box::new(merge(k, k2)?), Box::new(merge(v, v2)?))
        }
        (Format::Tuple(x), Format::Tuple(y)) => Format::Tuple(merge_all(x, y)?),
        (Format::Ref(x), Format::Ref(y)) if x == y => a.clone(),
        (Format::Back(x), Format::Back(y)) if x == y => a.clone(),
        _ => return None,
    })
}

fn merge_all(a: &[Format], b: &[Format]) -> Option<Vec<Format>> {
    if a.len() != b.len() {
        return None;
    }
    a.iter().zip(b).map(|(x, y)| merge(x, y)).collect()
}

fn merge_variant(a: &Variant, b: &Variant) -> Option<Variant> {
    Some(match (a, b) {
        (Variant::Unit, Variant::Unit) => Variant::Unit,
        (Variant::Newtype(x), Variant::Newtype(y)) => Variant::Newtype(merge(x, y)?),
        (Variant::Tuple(x), Variant::Tuple(y)) => Variant::Tuple(merge_all(x, y)?),
        (Variant::Struct(n, x), Variant::Struct(m, y)) if n == m => {
            Variant::Struct(n, merge_all(x, y)?)
        }
        _ => return None,
    })
}

/// How a pass stops early.
#[derive(Debug)]
enum TraceError {
    /// A container was entered a third time on one path. `handled`: what
    /// to do about it next pass has been recorded.
    Recursion { handled: bool },
    /// A `Deserialize` impl refused a primitive's answer; another is
    /// recorded for the next pass.
    Retry,
    /// Tracing cannot go on.
    Other(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Recursion { .. } => f.write_str("recursion"),
            TraceError::Retry => f.write_str("retry"),
            TraceError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        TraceError::Other(msg.to_string())
    }
}

/// The tracing deserializer: one per value requested.
#[derive(Clone)]
struct Tracer<'a> {
    ctx: &'a RefCell<Ctx>,
    pos: Pos,
}

/// What a string is answered with, in turn, when a type refuses the
/// previous answer (an id, a time or an address that parses itself).
const STRS: &[&str] = &[
    "",
    "0",
    "a",
    "00000000-0000-0000-0000-000000000000",
    "1970-01-01T00:00:00Z",
    "http://localhost/",
];
/// The same for byte strings (fixed-size ids, hashes, keys).
const BYTES: &[&[u8]] = &[b"", b"0", &[0; 16], &[0; 32]];

const ANY: &str = "it (or a type inside it) decodes with `deserialize_any`, which postcard \
                   cannot do: `#[serde(flatten)]`, `#[serde(untagged)]`, internally or \
                   adjacently tagged enums and `serde_json::Value` all need it; use plain \
                   structs and externally tagged enums";

impl<'a> Tracer<'a> {
    fn at(&self, pos: Pos) -> Tracer<'a> {
        Tracer { ctx: self.ctx, pos }
    }

    fn set_last(&self, f: Format) {
        self.ctx.borrow_mut().last = f;
    }

    fn take_last(&self) -> Format {
        std::mem::replace(&mut self.ctx.borrow_mut().last, Format::Unknown)
    }

    /// Which of `n` candidate answers a primitive gives at this place.
    fn candidate(&self, n: usize) -> usize {
        self.ctx
            .borrow()
            .alt
            .get(&self.pos)
            .copied()
            .unwrap_or(0)
            .min(n - 1)
    }

    /// A primitive's answer was refused: try the next candidate next pass.
    fn refused(&self, e: TraceError, tried: usize, n: usize) -> TraceError {
        match e {
            TraceError::Other(_) if tried + 1 < n => {
                let mut c = self.ctx.borrow_mut();
                c.alt.insert(self.pos.clone(), tried + 1);
                c.progress = true;
                TraceError::Retry
            }
            other => other,
        }
    }

    fn prim<V, T: Copy>(
        self,
        name: &'static str,
        candidates: &[T],
        visit: impl FnOnce(T) -> Result<V, TraceError>,
    ) -> Result<V, TraceError> {
        let i = self.candidate(candidates.len());
        self.set_last(Format::Prim(name));
        visit(candidates[i]).map_err(|e| self.refused(e, i, candidates.len()))
    }

    /// The key of a container of type `ty` at this place.
    fn key(&self, ty: TypeKey) -> Key {
        Key {
            ty,
            at: Box::new(self.pos.clone()),
        }
    }

    /// The end of an option or a map whose inner value was traced: if it
    /// recursed with nothing recorded yet, this place must be empty from now
    /// on (with `shape` as learned).
    fn empty_if_recursed<V>(
        &self,
        r: Result<V, TraceError>,
        shape: Format,
    ) -> Result<V, TraceError> {
        match r {
            Err(TraceError::Recursion { handled: false }) => {
                let mut c = self.ctx.borrow_mut();
                c.empty.insert(self.pos.clone(), shape.clone());
                c.progress = true;
                c.last = shape;
                Err(TraceError::Recursion { handled: true })
            }
            r => {
                self.set_last(shape);
                r
            }
        }
    }

    /// Enters a container: `Err` if its type is already twice on this path.
    fn enter(&self, key: &Key) -> Result<usize, TraceError> {
        let mut c = self.ctx.borrow_mut();
        let count = c.entered(&key.ty);
        if count >= 2 {
            c.last = Format::Back(key.ty.clone());
            return Err(TraceError::Recursion { handled: false });
        }
        c.stack.push(key.clone());
        Ok(count)
    }

    fn leave(&self, key: &Key) {
        let mut c = self.ctx.borrow_mut();
        c.stack.pop();
        c.last = Format::Ref(key.clone());
    }

    /// Visits `len` fixed elements (a tuple's, a struct's, a variant's),
    /// each traced at its own `Step::Field` under this place: the visitor's
    /// answer and each element's shape, as far as it got.
    fn elements<'de, V: Visitor<'de>>(
        &self,
        len: usize,
        visitor: V,
    ) -> (Result<V::Value, TraceError>, Vec<Format>) {
        let formats = RefCell::new(vec![Format::Unknown; len]);
        let r = visitor.visit_seq(Elements {
            tracer: self.clone(),
            formats: &formats,
            next: 0,
        });
        (r, formats.into_inner())
    }

    /// Traces one value one `step` below this place into `shape`.
    fn traced<'de, S: DeserializeSeed<'de>>(
        &self,
        step: Step,
        seed: S,
        shape: &RefCell<Format>,
    ) -> Result<S::Value, TraceError> {
        let r = seed.deserialize(self.at(self.pos.child(step)));
        *shape.borrow_mut() = self.take_last();
        r
    }

    fn fields<'de, V: Visitor<'de>>(
        self,
        key: Key,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.enter(&key)?;
        let (r, formats) = self.at(Pos::inside(&key)).elements(len, visitor);
        self.leave(&key);
        let v = r?;
        self.ctx
            .borrow_mut()
            .record(&key, Content::Fields(formats))?;
        Ok(v)
    }
}

macro_rules! prims {
    ($($method:ident $visit:ident $name:literal [$($c:expr),*];)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
            self.prim($name, &[$($c),*], |x| visitor.$visit(x))
        }
    )*};
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    prims! {
        deserialize_bool visit_bool "bool" [false, true];
        deserialize_i8 visit_i8 "i8" [0, 1];
        deserialize_i16 visit_i16 "i16" [0, 1];
        deserialize_i32 visit_i32 "i32" [0, 1];
        deserialize_i64 visit_i64 "i64" [0, 1];
        deserialize_i128 visit_i128 "i128" [0, 1];
        deserialize_u8 visit_u8 "u8" [0, 1];
        deserialize_u16 visit_u16 "u16" [0, 1];
        deserialize_u32 visit_u32 "u32" [0, 1];
        deserialize_u64 visit_u64 "u64" [0, 1];
        deserialize_u128 visit_u128 "u128" [0, 1];
        deserialize_f32 visit_f32 "f32" [0.0, 1.0];
        deserialize_f64 visit_f64 "f64" [0.0, 1.0];
        deserialize_char visit_char "char" ['a', '0'];
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.prim("str", STRS, |s| visitor.visit_str(s))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.prim("str", STRS, |s| visitor.visit_string(s.to_string()))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.prim("bytes", BYTES, |b| visitor.visit_bytes(b))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.prim("bytes", BYTES, |b| visitor.visit_byte_buf(b.to_vec()))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.set_last(Format::Prim("unit"));
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        // postcard writes nothing for either.
        self.set_last(Format::Prim("unit"));
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if self.ctx.borrow().minimal {
            self.set_last(Format::Option(Box::new(Format::Unknown)));
            return visitor.visit_none();
        }
        let known = self.ctx.borrow().empty.get(&self.pos).cloned();
        if let Some(shape) = known {
            self.set_last(shape);
            return visitor.visit_none();
        }
        let r = visitor.visit_some(self.at(self.pos.child(Step::Some)));
        let shape = Format::Option(Box::new(self.take_last()));
        self.empty_if_recursed(r, shape)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.key(TypeKey::Newtype(name));
        self.enter(&key)?;
        let r = visitor.visit_newtype_struct(self.at(Pos::inside(&key)));
        let inner = self.take_last();
        self.leave(&key);
        let v = r?;
        self.ctx
            .borrow_mut()
            .record(&key, Content::Newtype(inner))?;
        Ok(v)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let elem = RefCell::new(Format::Unknown);
        // (Read first: no borrow of the context may outlive a statement
        // that calls the visitor.)
        let minimal = self.ctx.borrow().minimal;
        let r = visitor.visit_seq(OneElement {
            tracer: self.clone(),
            elem: &elem,
            done: minimal,
        });
        self.set_last(Format::Seq(Box::new(elem.into_inner())));
        r
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (r, formats) = self.elements(len, visitor);
        self.set_last(Format::Tuple(formats));
        r
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.key(TypeKey::TupleStruct(name, len));
        self.fields(key, len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let known = self.ctx.borrow().empty.get(&self.pos).cloned();
        let minimal = self.ctx.borrow().minimal;
        let cells = (RefCell::new(Format::Unknown), RefCell::new(Format::Unknown));
        let r = visitor.visit_map(OneEntry {
            tracer: self.clone(),
            key: &cells.0,
            value: &cells.1,
            state: if known.is_some() || minimal { 2 } else { 0 },
        });
        let shape = known.unwrap_or_else(|| {
            Format::Map(
                Box::new(cells.0.into_inner()),
                Box::new(cells.1.into_inner()),
            )
        });
        self.empty_if_recursed(r, shape)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.key(TypeKey::Struct(name, fields));
        self.fields(key, fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.key(TypeKey::Enum(name, variants));
        if variants.is_empty() {
            // No value exists; the shape does.
            let mut c = self.ctx.borrow_mut();
            if !c.contents.contains_key(&key) {
                c.contents
                    .insert(key.clone(), Content::Variants(Vec::new()));
                c.progress = true;
            }
            c.last = Format::Ref(key);
            return Err(TraceError::Recursion { handled: false });
        }
        let count = self.enter(&key)?;
        let choice = self.ctx.borrow().choose(&key, count);
        let chosen = match choice {
            Ok(v) => v,
            Err(e) => {
                self.leave(&key);
                return Err(e);
            }
        };
        let traced = RefCell::new(None);
        let r = visitor.visit_enum(OneVariant {
            tracer: self.at(Pos::inside(&key).child(Step::Variant(chosen))),
            index: chosen,
            traced: &traced,
        });
        self.leave(&key);
        match r {
            Ok(v) => {
                let Some(variant) = traced.into_inner() else {
                    return Err(TraceError::Other(format!(
                        "the Deserialize impl of {} did not read its variant",
                        key.describe()
                    )));
                };
                let mut all = vec![None; variants.len()];
                all[chosen as usize] = Some(variant);
                self.ctx.borrow_mut().record(&key, Content::Variants(all))?;
                Ok(v)
            }
            Err(TraceError::Recursion { handled: false }) => {
                // This variant leads back into a container already twice on
                // the path: when re-entered, pick another.
                let mut c = self.ctx.borrow_mut();
                if c.recursive.insert((key.clone(), chosen)) {
                    c.progress = true;
                }
                c.last = Format::Ref(key);
                Err(TraceError::Recursion { handled: true })
            }
            Err(e) => Err(e),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError::Other(ANY.into()))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError::Other(ANY.into()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError::Other(ANY.into()))
    }

    fn is_human_readable(&self) -> bool {
        // As postcard: types with two forms (addresses, times) use the
        // compact one.
        false
    }
}

/// A sequence of one element (an empty one if the element recursed).
struct OneElement<'a, 'b> {
    tracer: Tracer<'a>,
    elem: &'b RefCell<Format>,
    done: bool,
}

impl<'de> SeqAccess<'de> for OneElement<'_, '_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        match self.tracer.traced(Step::Elem, seed, self.elem) {
            Ok(v) => Ok(Some(v)),
            // An element that recursed (or cannot exist): the sequence is
            // empty; the element's shape is still known.
            Err(TraceError::Recursion { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The fixed elements of a tuple, struct or variant.
struct Elements<'a, 'b> {
    tracer: Tracer<'a>,
    formats: &'b RefCell<Vec<Format>>,
    next: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_, '_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        let len = self.formats.borrow().len();
        if self.next >= len {
            return Ok(None);
        }
        let i = self.next;
        self.next += 1;
        let shape = RefCell::new(Format::Unknown);
        let r = self.tracer.traced(Step::Field(i), seed, &shape);
        self.formats.borrow_mut()[i] = shape.into_inner();
        r.map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.formats.borrow().len() - self.next)
    }
}

/// A map of one entry (none if its shape must be empty).
struct OneEntry<'a, 'b> {
    tracer: Tracer<'a>,
    key: &'b RefCell<Format>,
    value: &'b RefCell<Format>,
    /// 0: key next; 1: value next; 2: done.
    state: u8,
}

impl<'de> MapAccess<'de> for OneEntry<'_, '_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if self.state != 0 {
            return Ok(None);
        }
        self.state = 1;
        match self.tracer.traced(Step::Key, seed, self.key) {
            Ok(v) => Ok(Some(v)),
            Err(TraceError::Recursion { .. }) => {
                self.state = 2;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        self.state = 2;
        self.tracer.traced(Step::Value, seed, self.value)
    }
}

/// An enum answering with one chosen variant.
struct OneVariant<'a, 'b> {
    tracer: Tracer<'a>,
    index: u32,
    traced: &'b RefCell<Option<Variant>>,
}

impl<'a, 'b, 'de> EnumAccess<'de> for OneVariant<'a, 'b> {
    type Error = TraceError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), TraceError> {
        let v = seed.deserialize(de::value::U32Deserializer::<TraceError>::new(self.index))?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for OneVariant<'_, '_> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        *self.traced.borrow_mut() = Some(Variant::Unit);
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, TraceError> {
        let r = seed.deserialize(self.tracer.clone());
        let inner = self.tracer.take_last();
        let v = r?;
        *self.traced.borrow_mut() = Some(Variant::Newtype(inner));
        Ok(v)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (r, formats) = self.tracer.elements(len, visitor);
        let v = r?;
        *self.traced.borrow_mut() = Some(Variant::Tuple(formats));
        Ok(v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (r, formats) = self.tracer.elements(fields.len(), visitor);
        let v = r?;
        *self.traced.borrow_mut() = Some(Variant::Struct(fields, formats));
        Ok(v)
    }
}
