//! Procedural macros for ha: a plain struct becomes a replicated service.
//!
//! Use them through `ha_core` (`use ha_core::{replicated, Replicated};`):
//! its crate page is the guide, from a type to a cluster in one process and
//! then separate processes, with tested examples. This page is for readers
//! of the macros themselves.
//!
//! - `#[derive(Replicated)]` on the struct owns the *state*: snapshot and
//!   restore through serde and postcard, and the wire shape of the state
//!   type (`ReplicatedState`).
//! - `#[replicated]` on the struct's inherent `impl` block owns the
//!   *behaviour*: `pub fn m(&mut self, ..)` methods become commands
//!   (replicated through the log), `pub fn m(&self, ..)` methods become
//!   queries (linearizable reads, no log entry). It generates
//!   `<Name>Command`, `<Name>Query`, their output enums, `impl
//!   StateMachine`, `<Name>Client` with one async method per command and
//!   query, same name and arguments, returning `Result<R, ha_core::Error>`,
//!   and `impl Replicated` naming that client.
//!
//! Methods that are not `pub`, have no receiver, or carry
//! `#[replicated(skip)]` are left alone.
//!
//! The generated items take the type's name as their stem: `NameCommand`,
//! `NameQuery`, `NameCommandOutput`, `NameQueryOutput`, `NameClient`. If
//! the module already has a type of one of those names (rustc then says
//! "the name `NameCommand` is defined multiple times"), choose another
//! stem: `#[replicated(prefix = "Other")]` generates `OtherCommand`, ...,
//! `OtherClient`.
//!
//! Command bodies are scanned for what makes replicas drift apart (see
//! `determinism`): clocks, randomness, the environment, IO, and iterating
//! a `HashMap`/`HashSet` field of `self`. Each is an error with its fix,
//! unless the method says `#[replicated(allow(clock, random, env, io,
//! hash_iteration))]` (any of them).
//!
//! Errors point at the offending token and say what to write instead; all
//! of them are reported at once, and the impl block is kept so no cascade of
//! "method not found" errors follows. What only the type checker can tell
//! is reported the same way, by `#[diagnostic::on_unimplemented]` on
//! ha-core's traits:
//! - an argument or return type that is not serializable: one error at the
//!   type in the signature (a bound the macro places there), and the
//!   generated items hold only where every such type is serializable, so
//!   serde's derives add no errors of their own;
//! - a state that is not serializable: one error at the struct's name;
//! - `#[replicated]` without `#[derive(Replicated)]`: one error at the impl
//!   block's type, "add `#[derive(Replicated)]` to the struct";
//! - `#[derive(Replicated)]` without `#[replicated]`: the type is not
//!   `Replicated`, and using it as one says "add `#[replicated]` to its
//!   `impl` block".
//!
//! Generated code names everything by absolute path (`::ha_core::...`), so
//! it works whatever the user has imported.

use proc_macro::TokenStream;

mod determinism;
mod expand;

/// Implements snapshot and restore (`ha_core::sm::ReplicatedState`) for a
/// struct (see `ha_core`'s crate page, the guide). Use it together with
/// `#[replicated]` on the impl block, which completes `ha_core::Replicated`.
#[proc_macro_derive(Replicated)]
pub fn derive_replicated(input: TokenStream) -> TokenStream {
    expand::derive(input.into()).into()
}

/// Turns the methods of an inherent impl block into replicated commands and
/// queries, and generates the typed client (see `ha_core`'s crate page, the
/// guide).
#[proc_macro_attribute]
pub fn replicated(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::replicated(attr.into(), item.into()).into()
}
