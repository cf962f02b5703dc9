//! Compile-time determinism checks on command bodies.
//!
//! A command runs again on every replica, in log order, and must leave
//! every replica in the same state. What a syntactic scan can catch is
//! caught here, in command bodies only (queries change nothing):
//! - `clock`: `SystemTime::now`, `Instant::now`, `Utc::now`, `Local::now`,
//!   `OffsetDateTime::now_utc`/`now_local` (hint: `ApplyContext::time_ms`);
//! - `random`: `rand::...`, `thread_rng`, `OsRng`, `getrandom`, `fastrand`,
//!   `RandomState` (hint: a generator seeded from the context);
//! - `env`: `std::env::var`, `vars`, `var_os`, `args`, `current_dir`, ...;
//! - `io`: `std::fs`, `File`, sockets, `std::process`, `thread::sleep`;
//! - `hash_iteration`: iterating a field of `self` (`.iter()`, `.keys()`,
//!   `.values()`, `.drain()`, `for .. in &self.f`, ...). Only the type
//!   checker knows whether the field is a `HashMap`/`HashSet`, so each such
//!   place gets a probe (see `ha_core::__private::determinism`) that fails
//!   to compile for exactly those two types, with the hint as its message.
//!
//! Invariants:
//! 1. Every finding is an error spanned at the offending path or call,
//!    naming its category and the opt-out `#[replicated(allow(category))]`
//!    on the method; an allowed category is not reported.
//! 2. Nothing inside macro invocations is scanned (their tokens are not
//!    Rust syntax until expanded): the check is a help, not a proof, and
//!    the debug-build replay check (`ha_core::sm::Sessions`) backs it.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::{Expr, Member};

/// The categories, as `#[replicated(allow(..))]` names them.
pub const CATEGORIES: &[&str] = &["clock", "random", "env", "io", "hash_iteration"];

/// Methods that visit a collection's entries in its iteration order.
const ITERATING: &[&str] = &[
    "iter",
    "iter_mut",
    "into_iter",
    "keys",
    "values",
    "values_mut",
    "into_keys",
    "into_values",
    "drain",
];

/// What a scan of one command's body found.
pub struct Findings {
    /// Calls of clocks, randomness, the environment or IO.
    pub errors: Vec<syn::Error>,
    /// Fields of `self` iterated, each with the span of the iteration.
    pub iterated: Vec<(Member, Span)>,
}

/// Scans `body`, leaving out the categories in `allowed`.
pub fn scan(body: &syn::Block, allowed: &[String]) -> Findings {
    let mut v = Scan {
        allowed,
        found: Findings {
            errors: Vec::new(),
            iterated: Vec::new(),
        },
    };
    v.visit_block(body);
    v.found
}

struct Scan<'a> {
    allowed: &'a [String],
    found: Findings,
}

impl Scan<'_> {
    fn allows(&self, category: &str) -> bool {
        self.allowed.iter().any(|a| a == category)
    }

    fn report(&mut self, span: Span, category: &str, what: &str, hint: &str) {
        if self.allows(category) {
            return;
        }
        self.found.errors.push(syn::Error::new(
            span,
            format!(
                "{what} inside a command: every replica runs the command again, in log order, \
                 and would get another answer, so the replicas drift apart; {hint}. If this is \
                 intended, add `#[replicated(allow({category}))]` to the method"
            ),
        ));
    }

    fn check_path(&mut self, path: &syn::Path) {
        let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let has = |s: &str| segs.iter().any(|x| x == s);
        let ends = |a: &str, b: &str| {
            segs.len() >= 2 && segs[segs.len() - 2] == a && segs[segs.len() - 1] == b
        };
        // The last segment: the call that is the problem (`now`, `var`).
        let span = path
            .segments
            .last()
            .map_or_else(|| path.span(), |s| s.ident.span());
        if ends("SystemTime", "now")
            || ends("Instant", "now")
            || ends("Utc", "now")
            || ends("Local", "now")
            || ends("OffsetDateTime", "now_utc")
            || ends("OffsetDateTime", "now_local")
        {
            self.report(
                span,
                "clock",
                "reading the clock",
                "use `ctx.time_ms` (`&ApplyContext`): the leader's time, the same on every replica",
            );
        } else if segs.first().is_some_and(|s| s == "rand" || s == "fastrand")
            || has("thread_rng")
            || has("OsRng")
            || has("getrandom")
            || has("RandomState")
        {
            self.report(
                span,
                "random",
                "randomness",
                "derive a seed from the context (`ctx.index`, `ctx.term`) and use a seeded \
                 generator",
            );
        } else if segs.len() >= 2 && segs[segs.len() - 2] == "env" {
            self.report(
                span,
                "env",
                "reading the environment",
                "pass what the command needs as an argument",
            );
        } else if (segs.len() >= 2 && segs[segs.len() - 2] == "fs")
            || has("File")
            || has("OpenOptions")
            || has("TcpStream")
            || has("UdpSocket")
            || has("TcpListener")
            || (segs.len() >= 2 && segs[segs.len() - 2] == "process")
            || ends("thread", "sleep")
        {
            self.report(
                span,
                "io",
                "file, network or process access",
                "do IO outside the state machine and pass its result as an argument",
            );
        }
    }
}

/// `self.f`, through parentheses and references.
fn self_field(e: &Expr) -> Option<&syn::ExprField> {
    match e {
        Expr::Paren(p) => self_field(&p.expr),
        Expr::Reference(r) => self_field(&r.expr),
        Expr::Field(f) => match &*f.base {
            Expr::Path(p) if p.path.is_ident("self") => Some(f),
            _ => None,
        },
        _ => None,
    }
}

impl<'ast> Visit<'ast> for Scan<'_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.check_path(path);
        visit::visit_path(self, path);
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        if ITERATING.contains(&call.method.to_string().as_str())
            && !self.allows("hash_iteration")
            && let Some(f) = self_field(&call.receiver)
        {
            self.found
                .iterated
                .push((f.member.clone(), call.method.span()));
        }
        visit::visit_expr_method_call(self, call);
    }

    fn visit_expr_for_loop(&mut self, l: &'ast syn::ExprForLoop) {
        if !self.allows("hash_iteration")
            && let Some(f) = self_field(&l.expr)
        {
            self.found.iterated.push((f.member.clone(), l.expr.span()));
        }
        visit::visit_expr_for_loop(self, l);
    }

    // Nested items (a `fn` or `impl` inside the body) are the user's own
    // helpers: still part of the command, still scanned.
}

/// The probes for the iterated fields: one function the type checker
/// reads, that fails where a field is a `HashMap` or `HashSet`.
pub fn probes(name: &syn::Ident, iterated: &[(Member, Span)]) -> TokenStream {
    if iterated.is_empty() {
        return TokenStream::new();
    }
    // One hygienic name for the parameter and its uses.
    let this = syn::Ident::new("this", Span::mixed_site());
    let calls = iterated.iter().map(|(member, span)| {
        quote_spanned! {*span=>
            (&::ha_core::__private::determinism::Probe(&#this.#member))
                .__ha_check()
                .__ha_iteration_order();
        }
    });
    quote! {
        const _: () = {
            #[allow(dead_code, clippy::needless_borrow)]
            #[deny(deprecated)]
            fn __ha_determinism(#this: &#name) {
                use ::ha_core::__private::determinism::{IsOrdered as _, IsUnordered as _};
                #(#calls)*
            }
        };
    }
}
