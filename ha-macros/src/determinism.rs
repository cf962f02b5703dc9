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
//! - `hash_iteration`: iterating a direct field of `self` (`.iter()`,
//!   `.keys()`, `.values()`, `.drain()`, `for .. in &self.f`, ...). Only
//!   the type
//!   checker knows whether the field is a `HashMap`/`HashSet`, so each such
//!   place gets a probe (see `ha_core::__private::determinism`) that fails
//!   to compile for exactly those two types, with the hint as its message.
//!
//! Invariants:
//! 1. Every finding is an error spanned at the offending path or call,
//!    naming its category and the opt-out `#[replicated(allow(category))]`
//!    on the method; an allowed category is not reported.
//! 2. Only paths in expression position are checked (nested functions
//!    included), and nothing inside macro invocations: the check is a help,
//!    not a proof, and the debug-build replay check (`ha_core::sm::Sessions`)
//!    backs it.

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
        nested: 0,
    };
    v.visit_block(body);
    v.found
}

struct Scan<'a> {
    allowed: &'a [String],
    found: Findings,
    /// Inside a nested `fn` or `impl` of the body: its `self` is another.
    nested: usize,
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
        let Some((category, what, hint)) = classify_call(&segs) else {
            return;
        };
        // The last segment: the call that is the problem (`now`, `var`).
        let span = path
            .segments
            .last()
            .map_or_else(|| path.span(), |s| s.ident.span());
        self.report(span, category, what, hint);
    }
}

/// The functions of `std::env` that read the environment.
const ENV_FNS: &[&str] = &[
    "var",
    "vars",
    "var_os",
    "vars_os",
    "args",
    "args_os",
    "current_dir",
    "temp_dir",
    "home_dir",
];

/// The functions of `std::fs` that touch the file system.
const FS_FNS: &[&str] = &[
    "read",
    "read_to_string",
    "write",
    "read_dir",
    "metadata",
    "remove_file",
    "remove_dir",
    "remove_dir_all",
    "create_dir",
    "create_dir_all",
    "copy",
    "rename",
    "canonicalize",
    "hard_link",
    "set_permissions",
];

/// What a call through the path `segs` would do that a command must not:
/// its category (for `allow(...)`), what it is, and what to do instead.
fn classify_call(segs: &[String]) -> Option<(&'static str, &'static str, &'static str)> {
    if segs.is_empty() {
        return None;
    }
    let n = segs.len();
    let ends =
        |a: &str, b: &[&str]| n >= 2 && segs[n - 2] == a && b.contains(&segs[n - 1].as_str());
    // `std::fs::read`, or `fs::read` after `use std::fs`: a module of
    // the standard library and one of its functions, so a user's own
    // module of that name (`crate::process::step`) is not taken for it.
    let std_call = |module: &str, fns: &[&str]| {
        ends(module, fns) && (n == 2 || matches!(segs[0].as_str(), "std" | "core" | "tokio"))
    };
    if ends("SystemTime", &["now"])
        || ends("Instant", &["now"])
        || ends("Utc", &["now"])
        || ends("Local", &["now"])
        || ends("OffsetDateTime", &["now_utc", "now_local"])
    {
        return Some((
            "clock",
            "reading the clock",
            "use `ctx.time_ms` (`&ApplyContext`): the leader's time, the same on every replica",
        ));
    }
    if (n >= 2 && segs[0] == "fastrand" && segs[n - 1] != "with_seed")
        || (n >= 2
            && segs[0] == "rand"
            && matches!(segs[n - 1].as_str(), "thread_rng" | "rng" | "random"))
        || segs[0] == "getrandom"
        || segs
            .iter()
            .any(|s| matches!(s.as_str(), "OsRng" | "ThreadRng"))
        || matches!(
            segs[n - 1].as_str(),
            "thread_rng" | "from_entropy" | "from_os_rng"
        )
        || ends("RandomState", &["new", "default"])
    {
        return Some((
            "random",
            "randomness",
            "derive a seed from the context (`ctx.index`, `ctx.term`) and use a seeded \
             generator",
        ));
    }
    if std_call("env", ENV_FNS) {
        return Some((
            "env",
            "reading the environment",
            "pass what the command needs as an argument",
        ));
    }
    if std_call("fs", FS_FNS)
        || ends("File", &["open", "create", "create_new", "options"])
        || ends("OpenOptions", &["new"])
        || ends("TcpStream", &["connect"])
        || ends("UdpSocket", &["bind"])
        || ends("TcpListener", &["bind"])
        || std_call("process", &["Command", "exit", "abort", "id"])
        || ends("Command", &["new"]) && n >= 3 && segs[n - 3] == "process"
        || std_call("thread", &["sleep", "spawn"])
    {
        return Some((
            "io",
            "file, network or process access",
            "do IO outside the state machine and pass its result as an argument",
        ));
    }
    None
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
    // Paths in expression position only (calls, `Instant::now`): a type,
    // a pattern or a local named like a module is not a call.
    fn visit_expr_path(&mut self, e: &'ast syn::ExprPath) {
        self.check_path(&e.path);
        visit::visit_expr_path(self, e);
    }

    // Nested items (a `fn` or an `impl` inside the body) can only be called
    // from it: scanned for calls, but their `self` is another type's, so
    // no field of it is probed.
    fn visit_item(&mut self, item: &'ast syn::Item) {
        self.nested += 1;
        visit::visit_item(self, item);
        self.nested -= 1;
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        if ITERATING.contains(&call.method.to_string().as_str())
            && self.nested == 0
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
            && self.nested == 0
            && let Some(f) = self_field(&l.expr)
        {
            self.found.iterated.push((f.member.clone(), l.expr.span()));
        }
        visit::visit_expr_for_loop(self, l);
    }
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
