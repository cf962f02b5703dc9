//! The structural fingerprint: it sees inside every nested type, it does not
//! move when nothing stored moves, and old bytes never decode silently.
//!
//! The story behind it: a fingerprint built from the text of the user's
//! tokens left `Entry.qty: i32` and `Entry.qty: u32` equal, so a v1
//! snapshot with `qty = -3` restored as 5, and the same fingerprint changed
//! when an argument was renamed or a query added.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use ha_core::protocol::{CommandOutcome, LogCommand, LogOp, SessionCommand};
use ha_core::schema::{Schema, shape_of};
use ha_core::sm::{ReplicatedState, Sessions};
use ha_core::storage::{DataDir, DataDirError, StdFs};
use ha_core::types::{LogIndex, NodeId, Term};
use serde::{Deserialize, Serialize};

/// The first version: quantities are signed.
mod v1 {
    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    pub struct Entry {
        pub item: String,
        pub qty: i32,
    }

    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Ledger {
        pub entries: Vec<Entry>,
    }

    #[replicated]
    impl Ledger {
        /// Records an entry.
        pub fn record(&mut self, entry: Entry) -> usize {
            self.entries.push(entry);
            self.entries.len()
        }
        /// Number of entries.
        pub fn count(&self) -> usize {
            self.entries.len()
        }
    }
}

/// The second version: only the nested field's type changed.
mod v2 {
    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    pub struct Entry {
        pub item: String,
        pub qty: u32,
    }

    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Ledger {
        pub entries: Vec<Entry>,
    }

    #[replicated]
    impl Ledger {
        /// Records an entry.
        pub fn record(&mut self, entry: Entry) -> usize {
            self.entries.push(entry);
            self.entries.len()
        }
        /// Number of entries.
        pub fn count(&self) -> usize {
            self.entries.len()
        }
    }
}

/// v1 once more, written as differently as text allows while nothing
/// stored changes: other paths and aliases, another argument name, doc
/// comments on fields, trailing commas, another name for the nested type,
/// a `Box`, and one more query.
mod v1_respelled {
    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    type Quantity = i32;

    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    pub struct LedgerLine {
        /// What was counted.
        pub item: std::string::String,
        /// How many.
        pub qty: Quantity,
    }

    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Ledger {
        /// Every line, oldest first (boxed on purpose: the wire never
        /// sees a `Box`).
        #[allow(clippy::vec_box)]
        pub entries: std::vec::Vec<Box<LedgerLine>>,
    }

    #[replicated]
    impl Ledger {
        pub fn record(&mut self, line: LedgerLine) -> usize {
            self.entries.push(Box::new(line));
            self.entries.len()
        }
        pub fn count(&self) -> usize {
            self.entries.len()
        }
        pub fn is_empty(&self) -> bool {
            self.entries.is_empty()
        }
    }
}

/// Opens a session (secret 7) at index 1; its id.
fn register(s: &mut Sessions<v1::Ledger>) -> u64 {
    let reg = LogCommand {
        time_ms: 1,
        op: LogOp::Register { secret: 7 },
    };
    match s.apply_log_command(LogIndex(1), Term(1), reg) {
        CommandOutcome::Registered { session } => session,
        other => panic!("registration answered {other:?}"),
    }
}

/// The i32 -> u32 experiment: a nested field's type is inside the
/// fingerprint, so the v2 build refuses v1's snapshot and data directory
/// instead of reading `-3` as a large number.
#[test]
fn a_nested_field_type_change_changes_the_stored_fingerprint() {
    let a = Schema::of::<v1::Ledger>().unwrap();
    let b = Schema::of::<v2::Ledger>().unwrap();
    assert_ne!(
        a.stored(),
        b.stored(),
        "{}\n{}",
        a.stored_shape(),
        b.stored_shape()
    );
    assert!(a.stored_shape().contains("qty:i32"), "{}", a.stored_shape());
    assert!(b.stored_shape().contains("qty:u32"), "{}", b.stored_shape());

    // A v1 snapshot holding qty = -3 is refused by v2, not misread.
    let mut s = Sessions::<v1::Ledger>::new();
    let session = register(&mut s);
    let body = postcard::to_stdvec(&v1::LedgerCommand::Record {
        entry: v1::Entry {
            item: "widget".into(),
            qty: -3,
        },
    })
    .unwrap();
    let cmd = LogCommand {
        time_ms: 2,
        op: LogOp::Command(SessionCommand {
            client: session,
            secret: 7,
            seq: 1,
            ack_below: 1,
            body: Bytes::from(body),
        }),
    };
    assert!(matches!(
        s.apply_log_command(LogIndex(2), Term(1), cmd),
        CommandOutcome::Applied(_)
    ));
    let snap = s.snapshot().unwrap();
    let err = Sessions::<v2::Ledger>::restore(&snap)
        .err()
        .expect("v2 refuses a v1 snapshot");
    assert!(err.to_string().contains("another version"), "{err}");

    // A data directory written by v1 is refused by v2 before anything is read.
    let dir = tempfile::tempdir().unwrap();
    DataDir::open_for::<v1::Ledger, _>(&StdFs, dir.path(), "c", NodeId(1)).unwrap();
    match DataDir::open_for::<v2::Ledger, _>(&StdFs, dir.path(), "c", NodeId(1)) {
        Err(DataDirError::SchemaMismatch {
            found, expected, ..
        }) => {
            assert_eq!((found, expected), (a.stored(), b.stored()));
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
}

/// What changes nothing stored changes nothing: paths, aliases, argument
/// names, doc comments, trailing commas, type names, `Box`, and queries
/// (never logged: they have their own fingerprint).
#[test]
fn edits_that_store_nothing_new_keep_the_stored_fingerprint() {
    let a = Schema::of::<v1::Ledger>().unwrap();
    let r = Schema::of::<v1_respelled::Ledger>().unwrap();
    assert_eq!(a.stored_shape(), r.stored_shape());
    assert_eq!(a.stored(), r.stored());
    // The added query is a change to the query fingerprint only.
    assert_ne!(a.query(), r.query());
    // The value is pinned: it depends on this crate's canonical text only,
    // never on a compiler's token printer, so no toolchain upgrade can make
    // a node refuse its own data directory. tests/tests/schema_guard.rs
    // pins the same value for a copy of this type in another crate.
    // ha's own envelope (log entry, snapshot, session table) comes first.
    assert!(a.stored_shape().starts_with("ha-stored/1 envelope=log={"));
    assert!(
        a.stored_shape().ends_with(
            " commands=enum{Record({item:str,qty:i32})} outputs=enum{Record(u64)} \
             state={entries:seq<{item:str,qty:i32}>}"
        ),
        "{}",
        a.stored_shape()
    );
    assert_eq!(a.stored(), LEDGER_V1_STORED, "{:016x}", a.stored());
}

/// The session settings decide which commands apply (an expired or evicted
/// session's are refused), so replicas must share them: they are in the
/// stored fingerprint, and no node option changes them.
#[test]
fn the_session_settings_are_part_of_the_stored_fingerprint() {
    let a = Schema::of::<v1::Ledger>().unwrap();
    let settings = format!(
        " sessions(timeout_ms={},max={},open_results={},operator_ops={}) ",
        ha_core::sm::DEFAULT_SESSION_TIMEOUT_MS,
        ha_core::sm::DEFAULT_MAX_SESSIONS,
        ha_core::sm::MAX_OPEN_RESULTS,
        ha_core::sm::MAX_OPERATOR_OPS
    );
    assert!(a.stored_shape().contains(&settings), "{}", a.stored_shape());
}

/// The stored fingerprint of `v1::Ledger` (also pinned in another crate).
const LEDGER_V1_STORED: u64 = 0xcd89_feb2_c0f7_9203;

#[derive(Serialize, Deserialize)]
struct Pair {
    a: u32,
    b: u32,
}

#[derive(Serialize, Deserialize)]
struct PairSwapped {
    b: u32,
    a: u32,
}

#[derive(Serialize, Deserialize)]
struct PairRenamed {
    #[serde(rename = "a")]
    first: u32,
    #[serde(rename = "b")]
    second: u32,
}

#[derive(Serialize, Deserialize)]
enum Dir3 {
    Up,
    Down,
    Left,
}

#[derive(Serialize, Deserialize)]
enum Dir3Reordered {
    Down,
    Up,
    Left,
}

#[test]
fn names_and_order_that_give_positions_meaning_are_in_the_shape() {
    // Swapping two fields of one type would silently swap their values.
    assert_ne!(
        shape_of::<Pair>().unwrap(),
        shape_of::<PairSwapped>().unwrap()
    );
    // serde's rename keeps the shape when a Rust name changes.
    assert_eq!(
        shape_of::<Pair>().unwrap(),
        shape_of::<PairRenamed>().unwrap()
    );
    assert_ne!(
        shape_of::<Dir3>().unwrap(),
        shape_of::<Dir3Reordered>().unwrap()
    );
    assert_eq!(shape_of::<Dir3>().unwrap(), "enum{Up,Down,Left}");
}

#[test]
fn wire_identical_spellings_share_a_shape() {
    assert_eq!(shape_of::<Vec<u8>>().unwrap(), "bytes");
    assert_eq!(shape_of::<Bytes>().unwrap(), "bytes");
    assert_eq!(
        shape_of::<HashMap<String, u64>>().unwrap(),
        shape_of::<BTreeMap<String, u64>>().unwrap()
    );
    assert_eq!(shape_of::<[u16; 3]>().unwrap(), "[u16;3]");
    assert_eq!(shape_of::<(u16, u16, u16)>().unwrap(), "[u16;3]");
    assert_eq!(shape_of::<(u8, String)>().unwrap(), "(u8,str)");
    assert_eq!(shape_of::<Option<Box<i64>>>().unwrap(), "option<i64>");
    assert_ne!(shape_of::<i32>().unwrap(), shape_of::<u32>().unwrap());
    assert_ne!(
        shape_of::<String>().unwrap(),
        shape_of::<Vec<u8>>().unwrap()
    );
}

/// Types that contain themselves, through each way out.
#[derive(Serialize, Deserialize)]
struct Tree {
    label: String,
    left: Option<Box<Tree>>,
    right: Option<Box<Tree>>,
}

#[derive(Serialize, Deserialize)]
struct Rose {
    kids: Vec<Rose>,
}

#[derive(Serialize, Deserialize)]
struct Folder {
    children: BTreeMap<String, Folder>,
}

#[derive(Serialize, Deserialize)]
enum Expr {
    Add(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Lit(i64),
}

#[derive(Serialize, Deserialize)]
struct Doc {
    body: Block,
}

#[derive(Serialize, Deserialize)]
enum Block {
    Quote(Box<Doc>),
    Text(String),
    List(Vec<Block>),
}

/// A type met again inside itself is traced once more (that is how a
/// generic type nested in itself, `Result<Result<..>>`, is told apart from
/// recursion), then referred back to: `^n` is the container `n` levels up.
#[test]
fn recursive_types_trace_to_back_references() {
    assert_eq!(
        shape_of::<Tree>().unwrap(),
        "{label:str,left:option<{label:str,left:option<^1>,right:option<^1>}>,\
         right:option<{label:str,left:option<^1>,right:option<^1>}>}"
    );
    assert_eq!(shape_of::<Rose>().unwrap(), "{kids:seq<{kids:seq<^1>}>}");
    assert_eq!(
        shape_of::<Folder>().unwrap(),
        "{children:map<str,{children:map<str,^1>}>}"
    );
    assert_eq!(
        shape_of::<Expr>().unwrap(),
        "enum{Add(enum{Add^1,Neg^1,Lit(i64)},enum{Add^1,Neg^1,Lit(i64)}),\
         Neg(enum{Add^1,Neg^1,Lit(i64)}),Lit(i64)}"
    );
    assert_eq!(
        shape_of::<Doc>().unwrap(),
        "{body:enum{Quote({body:enum{Quote^2,Text(str),List(seq<^1>)}}),Text(str),List(seq<^1>)}}"
    );
}

#[derive(Serialize, Deserialize)]
enum Outer {
    A(Inner1),
    B(Option<Inner2>),
}

#[derive(Serialize, Deserialize)]
enum Inner1 {
    X,
    Y(u8),
}

#[derive(Serialize, Deserialize)]
enum Inner2 {
    P,
    Q { deep: Inner1, more: Vec<Inner3> },
}

#[derive(Serialize, Deserialize)]
enum Inner3 {
    M,
    N(i8),
}

#[test]
fn every_variant_of_every_nested_enum_is_traced() {
    assert_eq!(
        shape_of::<Outer>().unwrap(),
        "enum{A(enum{X,Y(u8)}),B(option<enum{P,Q{deep:enum{X,Y(u8)},more:seq<enum{M,N(i8)}>}}>)}"
    );
}

#[derive(Serialize, Deserialize)]
struct Validated {
    count: std::num::NonZeroU32,
    wait: std::time::Duration,
    at: std::net::SocketAddr,
}

#[test]
fn types_that_validate_their_input_are_traced() {
    let s = shape_of::<Validated>().unwrap();
    assert!(
        s.starts_with("{count:u32,wait:{secs:u64,nanos:u32},at:enum{V4("),
        "{s}"
    );
}

#[derive(Serialize, Deserialize)]
struct Flat {
    a: u32,
    #[serde(flatten)]
    rest: Pair,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    A(u32),
    B(String),
}

#[test]
fn types_postcard_cannot_decode_are_refused_with_the_reason() {
    for err in [
        shape_of::<Flat>().unwrap_err(),
        shape_of::<Untagged>().unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(text.contains("deserialize_any"), "{text}");
        assert!(text.contains("flatten"), "{text}");
    }
}

#[derive(Serialize, Deserialize)]
struct Endless {
    next: Box<Endless>,
}

#[test]
fn a_type_with_no_finite_value_is_refused() {
    let text = shape_of::<Endless>().unwrap_err().to_string();
    assert!(text.contains("no value of it can be built"), "{text}");
}

/// Bytes after a value are an error everywhere a value is decoded: a type
/// that lost its last field would otherwise read old data "successfully".
#[test]
fn trailing_bytes_are_refused() {
    #[derive(Default, Serialize, Deserialize, ha_core::Replicated)]
    struct Wide {
        a: u32,
        b: u32,
    }
    #[ha_core::replicated]
    impl Wide {}
    #[derive(Default, Serialize, Deserialize, ha_core::Replicated)]
    struct Narrow {
        a: u32,
    }
    #[ha_core::replicated]
    impl Narrow {}
    let old = Wide { a: 1, b: 2 }.snapshot_state().unwrap();
    let err = Narrow::restore_state(&old).err().expect("refused");
    assert!(err.to_string().contains("bytes follow the value"), "{err}");

    // A command body with a byte too many is never applied.
    let mut s = Sessions::<v1::Ledger>::new();
    let session = register(&mut s);
    let mut body = postcard::to_stdvec(&v1::LedgerCommand::Record {
        entry: v1::Entry::default(),
    })
    .unwrap();
    body.push(0);
    let cmd = LogCommand {
        time_ms: 2,
        op: LogOp::Command(SessionCommand {
            client: session,
            secret: 7,
            seq: 1,
            ack_below: 1,
            body: Bytes::from(body),
        }),
    };
    match s.apply_log_command(LogIndex(2), Term(1), cmd) {
        CommandOutcome::Undecodable(why) => assert!(why.contains("bytes follow"), "{why}"),
        other => panic!("expected undecodable, got {other:?}"),
    }
    assert_eq!(s.state().entries.len(), 0);
}

/// One generic type in two places: serde names both "Result", yet each is
/// traced in full (a shared trace once rendered the second as the first).
#[derive(Serialize, Deserialize)]
enum Outputs {
    A(Result<u64, String>),
    B(Result<String, String>),
    C(Result<bool, String>),
}

#[derive(Serialize, Deserialize)]
enum OutputsChanged {
    A(Result<u64, String>),
    B(Result<u32, String>),
    C(Result<bool, String>),
}

mod one {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum Mode {
        On(u8),
        Off,
    }
}

mod two {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum Mode {
        On(String),
        Off,
    }
}

#[derive(Serialize, Deserialize)]
struct TwoModes {
    a: one::Mode,
    b: two::Mode,
}

#[derive(Serialize, Deserialize)]
struct TwoModesSwapped {
    a: two::Mode,
    b: one::Mode,
}

#[test]
fn one_generic_or_one_name_in_two_places_is_traced_in_each() {
    let a = shape_of::<Outputs>().unwrap();
    assert_eq!(
        a,
        "enum{A(enum{Ok(u64),Err(str)}),B(enum{Ok(str),Err(str)}),C(enum{Ok(bool),Err(str)})}"
    );
    assert_ne!(a, shape_of::<OutputsChanged>().unwrap());
    assert_ne!(
        shape_of::<TwoModes>().unwrap(),
        shape_of::<TwoModesSwapped>().unwrap()
    );
    assert_eq!(
        shape_of::<Result<Result<u8, String>, String>>().unwrap(),
        "enum{Ok(enum{Ok(u8),Err(str)}),Err(str)}"
    );
}

/// Recursion through a second type and an `Option` or a map.
#[derive(Serialize, Deserialize)]
struct List {
    head: Option<Box<Cell>>,
}

#[derive(Serialize, Deserialize)]
struct Cell {
    v: u32,
    rest: List,
}

#[derive(Serialize, Deserialize)]
struct Dir {
    entries: BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    size: u64,
    sub: Dir,
}

#[derive(Serialize, Deserialize)]
enum Loop {
    Again(Box<Loop>),
}

#[test]
fn mutual_recursion_through_options_and_maps_is_traced() {
    let list = shape_of::<List>().unwrap();
    assert!(
        list.starts_with("{head:option<{v:u32,rest:{head:option<"),
        "{list}"
    );
    assert!(list.contains('^'), "{list}");
    let dir = shape_of::<Dir>().unwrap();
    assert!(
        dir.starts_with("{entries:map<str,{size:u64,sub:{entries:map<str,"),
        "{dir}"
    );
    // Every variant recursing is a clean error, not a panic.
    let text = shape_of::<Loop>().unwrap_err().to_string();
    assert!(text.contains("no value of it can be built"), "{text}");
}

#[derive(Serialize, Deserialize)]
struct SkipsWhenNone {
    a: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    b: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct OddNames {
    #[serde(rename = "x:u8,y")]
    x: u8,
}

#[derive(Serialize, Deserialize)]
struct TwoFields {
    x: u8,
    y: u8,
}

#[test]
fn a_serialize_impl_that_writes_another_shape_is_refused() {
    let text = shape_of::<SkipsWhenNone>().unwrap_err().to_string();
    assert!(
        text.contains("Serialize and Deserialize impls disagree"),
        "{text}"
    );
}

#[test]
fn names_cannot_forge_the_shape_text() {
    let odd = shape_of::<OddNames>().unwrap();
    assert_eq!(odd, "{\"x:u8,y\":u8}");
    assert_ne!(odd, shape_of::<TwoFields>().unwrap());
}
