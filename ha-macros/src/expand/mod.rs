//! The expansions behind the two macros, on `proc_macro2` tokens so unit
//! tests can run them.
//!
//! Invariants:
//! 1. Every error is a `syn::Error` spanned on the offending token, with a
//!    hint; errors are combined and emitted together with the user's impl
//!    block (unchanged but for stripped `#[replicated(..)]` attributes).
//! 2. Nothing here computes a fingerprint: the generated enums and the
//!    state are traced at run time by `ha_core::schema`, through the serde
//!    impls derived here, so the fingerprint sees every nested type and
//!    never the text of the user's tokens.
//! 3. A misuse only the type checker sees (a type that is not serializable,
//!    a missing macro) fails one bound whose trait carries the message
//!    (`#[diagnostic::on_unimplemented]` in ha-core), spanned at the user's
//!    token; no other generated item fails because of it.

mod generate;

use self::generate::generate;
use crate::determinism;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, Pat, ReturnType,
    Signature, Type, Visibility,
};

/// The derive: state side.
pub fn derive(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    if !input.generics.params.is_empty() {
        return syn::Error::new_spanned(
            &input.generics,
            "generic replicated types are not supported yet: make the state a concrete type",
        )
        .to_compile_error();
    }
    if matches!(input.data, Data::Union(_)) {
        return syn::Error::new_spanned(&input.ident, "a union cannot be replicated: use a struct")
            .to_compile_error();
    }
    let name = &input.ident;
    // `Replicated` itself (which names the client) comes from `#[replicated]`:
    // without it the struct is not a replicated type, and using it as one
    // says so (see `ha_core::sm::Replicated`). `do_not_recommend` keeps this
    // impl out of "the trait is implemented for ..." lists in other errors.
    quote! {
        #[diagnostic::do_not_recommend]
        impl ::ha_core::sm::ReplicatedState for #name {
            fn snapshot_state(&self) -> ::std::result::Result<::std::vec::Vec<u8>, ::ha_core::sm::StateError> {
                <#name as ::ha_core::__private::StateCodec>::encode(self)
            }
            fn restore_state(bytes: &[u8]) -> ::std::result::Result<Self, ::ha_core::sm::StateError> {
                <#name as ::ha_core::__private::StateCodec>::decode(bytes)
            }
            fn state_shape() -> ::std::result::Result<::std::string::String, ::ha_core::schema::SchemaError> {
                <#name as ::ha_core::__private::StateCodec>::shape()
            }
            fn canonical_state(&self, sorted: bool) -> ::std::result::Result<::std::vec::Vec<u8>, ::ha_core::sm::StateError> {
                <#name as ::ha_core::__private::StateCodec>::canonical(self, sorted)
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Command,
    Query,
}

struct Method {
    kind: Kind,
    name: Ident,
    variant: Ident,
    args: Vec<(Ident, Type)>,
    /// Whether the method takes `&ApplyContext`, and where among its args.
    context_at: Option<usize>,
    ret: Option<Type>,
    docs: Vec<Attribute>,
}

/// Names the generated client defines itself.
const RESERVED: &[&str] = &["inner", "with_consistency", "with_timeout", "from", "clone"];

fn camel(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
        })
        .collect()
}

fn is_ours(attr: &Attribute) -> bool {
    attr.path().is_ident("replicated")
}

/// What a method's `#[replicated(..)]` attributes say.
#[derive(Default)]
struct MethodAttrs {
    skip: bool,
    /// Determinism categories allowed (`allow(clock, ..)`).
    allowed: Vec<String>,
}

fn method_attrs(attrs: &[Attribute], errors: &mut Vec<syn::Error>) -> MethodAttrs {
    let mut out = MethodAttrs::default();
    for a in attrs.iter().filter(|a| is_ours(a)) {
        let parsed = a.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                out.skip = true;
                return Ok(());
            }
            if meta.path.is_ident("allow") {
                return meta.parse_nested_meta(|inner| {
                    let name = inner
                        .path
                        .get_ident()
                        .map(|i| i.to_string())
                        .unwrap_or_default();
                    if determinism::CATEGORIES.contains(&name.as_str()) {
                        out.allowed.push(name);
                        Ok(())
                    } else {
                        Err(inner.error(format!(
                            "unknown determinism check: write one of {}",
                            determinism::CATEGORIES.join(", ")
                        )))
                    }
                });
            }
            Err(meta.error(
                "write `#[replicated(skip)]` or `#[replicated(allow(clock, random, env, io, \
                 hash_iteration))]`",
            ))
        });
        if let Err(e) = parsed {
            errors.push(e);
        }
    }
    out
}

/// A type that can never cross the network, with the hint to give.
fn unserializable(ty: &Type) -> Option<(Span, String)> {
    match ty {
        Type::Reference(r) => Some((
            r.and_token.span,
            "arguments and results are sent to other replicas and must be owned: take \
             `String` instead of `&str`, `Vec<T>` instead of `&[T]`, `T` instead of `&T`"
                .into(),
        )),
        Type::Ptr(p) => Some((
            p.star_token.span,
            "raw pointers cannot be replicated: use an owned value".into(),
        )),
        Type::ImplTrait(t) => Some((
            t.impl_token.span,
            "`impl Trait` cannot be replicated: use a concrete, serializable type".into(),
        )),
        Type::TraitObject(t) => Some((
            t.span(),
            "trait objects cannot be replicated: use a concrete, serializable type".into(),
        )),
        Type::BareFn(f) => Some((f.span(), "functions cannot be replicated: use data".into())),
        Type::Path(p) => {
            let last = p.path.segments.last()?;
            let hint = match last.ident.to_string().as_str() {
                "Instant" => {
                    "`Instant` means nothing on another machine and is not serializable: \
                              pass milliseconds, or read `ApplyContext::time_ms`"
                }
                "Mutex" | "RwLock" | "RefCell" | "Cell" => {
                    "locks and cells cannot be replicated: pass the value inside"
                }
                _ => {
                    // Look inside generic arguments (`Vec<&str>`, `Option<Instant>`).
                    if let syn::PathArguments::AngleBracketed(a) = &last.arguments {
                        for g in &a.args {
                            if let syn::GenericArgument::Type(t) = g
                                && let Some(found) = unserializable(t)
                            {
                                return Some(found);
                            }
                        }
                    }
                    return None;
                }
            };
            Some((last.ident.span(), hint.into()))
        }
        Type::Tuple(t) => t.elems.iter().find_map(unserializable),
        Type::Array(a) => unserializable(&a.elem),
        Type::Slice(s) => unserializable(&s.elem),
        Type::Paren(p) => unserializable(&p.elem),
        _ => None,
    }
}

/// How an argument names `ApplyContext`, if it does.
enum ContextArg {
    /// `&ApplyContext`: the one form a command may take.
    Shared,
    /// `ApplyContext` or `&mut ApplyContext`: refused with a hint.
    Other,
}

fn context_arg(ty: &Type) -> Option<ContextArg> {
    let (ty, form) = match ty {
        Type::Reference(r) if r.mutability.is_none() => (&*r.elem, ContextArg::Shared),
        Type::Reference(r) => (&*r.elem, ContextArg::Other),
        other => (other, ContextArg::Other),
    };
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    (last.ident == "ApplyContext" && last.arguments.is_none()).then_some(form)
}

/// `ty` with every `Self` in it replaced by `name`: inside the generated
/// enums and client, `Self` would name them, not the replicated type (an
/// argument of type `Self` made the command enum contain itself).
fn replace_self(ty: &Type, name: &Ident) -> Type {
    fn walk(ts: TokenStream, name: &Ident) -> TokenStream {
        ts.into_iter()
            .map(|tt| match tt {
                proc_macro2::TokenTree::Ident(i) if i == "Self" => {
                    let mut n = name.clone();
                    n.set_span(i.span());
                    proc_macro2::TokenTree::Ident(n)
                }
                proc_macro2::TokenTree::Group(g) => {
                    let mut inner = proc_macro2::Group::new(g.delimiter(), walk(g.stream(), name));
                    inner.set_span(g.span());
                    proc_macro2::TokenTree::Group(inner)
                }
                other => other,
            })
            .collect()
    }
    syn::parse2(walk(quote!(#ty), name)).unwrap_or_else(|_| ty.clone())
}

fn analyse(f: &ImplItemFn, name: &Ident, errors: &mut Vec<syn::Error>) -> Option<Method> {
    if !matches!(f.vis, Visibility::Public(_)) {
        return None;
    }
    let sig = &f.sig;
    let kind = receiver_kind(sig, errors)?;
    let mut ok = plain_signature(sig, errors);
    let (args, context_at) = arguments(sig, kind, name, errors, &mut ok);
    let ret = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, t) => {
            if let Some((span, hint)) = unserializable(t) {
                errors.push(syn::Error::new(span, hint));
                ok = false;
            }
            Some(replace_self(t, name))
        }
    };
    let variant = variant_name(sig, errors, &mut ok);
    let docs = f
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    ok.then(|| Method {
        kind,
        variant: Ident::new(&variant, sig.ident.span()),
        name: sig.ident.clone(),
        args,
        context_at,
        ret,
        docs,
    })
}

/// A command (`&mut self`) or a query (`&self`); `None` for an associated
/// function (left alone) or a receiver that cannot be either (an error).
fn receiver_kind(sig: &Signature, errors: &mut Vec<syn::Error>) -> Option<Kind> {
    let receiver = match sig.inputs.first() {
        Some(FnArg::Receiver(r)) => r,
        _ => return None, // Associated function: left alone.
    };
    let kind = match (&receiver.reference, &receiver.mutability) {
        (Some(_), Some(_)) => Kind::Command,
        (Some(_), None) => Kind::Query,
        (None, _) => {
            errors.push(syn::Error::new_spanned(
                receiver.self_token,
                "`self` by value would consume the replicated state: take `&mut self` for a \
                 command or `&self` for a query",
            ));
            return None;
        }
    };
    if receiver.colon_token.is_some() {
        errors.push(syn::Error::new_spanned(
            &receiver.ty,
            "typed receivers are not supported: write `&mut self` or `&self`",
        ));
        return None;
    }
    Some(kind)
}

/// Whether the signature is plain: not async, not unsafe, not generic.
fn plain_signature(sig: &Signature, errors: &mut Vec<syn::Error>) -> bool {
    let mut ok = true;
    if let Some(a) = &sig.asyncness {
        errors.push(syn::Error::new_spanned(
            a,
            "replicated methods must be synchronous and deterministic: they run again on every \
             replica, in log order; do IO outside the state machine",
        ));
        ok = false;
    }
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            "replicated methods cannot be `unsafe`",
        ));
        ok = false;
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "replicated methods cannot be generic: each becomes one concrete enum variant; use \
             concrete types (or `#[replicated(skip)]` to keep it local)",
        ));
        ok = false;
    }
    ok
}

/// The arguments that become the command's or query's fields, and where
/// the `&ApplyContext` was among them; clears `ok` on an error.
fn arguments(
    sig: &Signature,
    kind: Kind,
    name: &Ident,
    errors: &mut Vec<syn::Error>,
    ok: &mut bool,
) -> (Vec<(Ident, Type)>, Option<usize>) {
    let mut args = Vec::new();
    let mut context_at = None;
    for (k, input) in sig.inputs.iter().skip(1).enumerate() {
        let FnArg::Typed(pt) = input else { continue };
        if let Some(form) = context_arg(&pt.ty) {
            if kind == Kind::Query {
                errors.push(syn::Error::new_spanned(
                    &pt.ty,
                    "queries do not take an `ApplyContext`: only commands run in log order",
                ));
                *ok = false;
            } else if let ContextArg::Other = form {
                errors.push(syn::Error::new_spanned(
                    &pt.ty,
                    "take `&ApplyContext`: a command borrows its context, it does not own or \
                     change it",
                ));
                *ok = false;
            }
            context_at = Some(k);
            continue;
        }
        let Pat::Ident(pi) = &*pt.pat else {
            errors.push(syn::Error::new_spanned(
                &pt.pat,
                "use a plain argument name: it becomes a field of the command",
            ));
            *ok = false;
            continue;
        };
        if let Some((span, hint)) = unserializable(&pt.ty) {
            errors.push(syn::Error::new(span, hint));
            *ok = false;
            continue;
        }
        args.push((pi.ident.clone(), replace_self(&pt.ty, name)));
    }
    (args, context_at)
}

/// The variant's name (the method's, in camel case); clears `ok` for a
/// name the generated client takes or one made only of underscores.
fn variant_name(sig: &Signature, errors: &mut Vec<syn::Error>, ok: &mut bool) -> String {
    // A raw identifier (`r#type`) names the variant by its plain text.
    let plain = sig.ident.unraw().to_string();
    if RESERVED.contains(&plain.as_str()) {
        errors.push(syn::Error::new_spanned(
            &sig.ident,
            format!(
                "`{}` clashes with a method of the generated client: rename it, or add \
                 `#[replicated(skip)]`",
                sig.ident
            ),
        ));
        *ok = false;
    }
    // `_` or `__` leaves nothing to name a variant with.
    let variant = camel(&plain);
    if variant.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.ident,
            "a method named only with underscores cannot name a command or query: rename it, or \
             add `#[replicated(skip)]`",
        ));
        *ok = false;
    }
    variant
}

/// The attribute: behaviour side.
pub fn replicated(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut imp: ItemImpl = match syn::parse2(item) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let mut errors: Vec<syn::Error> = Vec::new();
    let prefix = impl_prefix(attr, &mut errors);
    let name = impl_type_name(&imp, &mut errors);
    let (methods, iterated, not_replayed) = collect_methods(&mut imp, &name, &mut errors);
    // The code for every method that is fine is generated even when others
    // are not, so the only errors the user sees are the ones reported here,
    // not a cascade of missing types and traits.
    let generated = generate(
        &name,
        prefix.as_ref().unwrap_or(&name),
        &methods,
        &not_replayed,
    );
    let probes = determinism::probes(&name, &iterated);
    let errors = errors
        .into_iter()
        .reduce(|mut a, b| {
            a.combine(b);
            a
        })
        .map(|e| e.to_compile_error());
    quote! {
        #imp
        #generated
        #probes
        #errors
    }
}

/// `prefix = "Stem"`: the generated items are `StemCommand`, ...,
/// `StemClient` instead of the type's name (for a module that already has a
/// type of one of those names).
fn impl_prefix(attr: TokenStream, errors: &mut Vec<syn::Error>) -> Option<Ident> {
    let mut prefix: Option<Ident> = None;
    if !attr.is_empty() {
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("prefix") {
                let s: syn::LitStr = meta.value()?.parse()?;
                prefix = Some(s.parse::<Ident>().map_err(|_| {
                    syn::Error::new(s.span(), "the prefix must be an identifier, like \"Tally\"")
                })?);
                Ok(())
            } else {
                Err(meta.error(
                    "`#[replicated]` on an impl block takes only `prefix = \"Name\"` (to rename \
                     the generated `NameCommand`, `NameQuery`, `NameCommandOutput`, \
                     `NameQueryOutput` and `NameClient`)",
                ))
            }
        });
        if let Err(e) = syn::parse::Parser::parse2(parser, attr) {
            errors.push(e);
        }
    }
    prefix
}

/// The replicated type's name, from an inherent, non-generic impl block.
fn impl_type_name(imp: &ItemImpl, errors: &mut Vec<syn::Error>) -> Ident {
    if let Some((_, path, _)) = &imp.trait_ {
        errors.push(syn::Error::new_spanned(
            path,
            "`#[replicated]` goes on the type's inherent impl block (`impl Name { .. }`), not on a \
             trait impl",
        ));
    }
    if !imp.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &imp.generics,
            "generic replicated types are not supported yet: make the state a concrete type",
        ));
    }
    match &*imp.self_ty {
        Type::Path(p) if p.qself.is_none() && p.path.segments.len() == 1 => {
            p.path.segments[0].ident.clone()
        }
        other => {
            errors.push(syn::Error::new_spanned(
                other,
                "expected the name of a struct",
            ));
            Ident::new("Unknown", Span::call_site())
        }
    }
}

/// The impl block's commands and queries (stripping the macro's own
/// attributes from every method), the `self` fields their bodies iterate
/// (for the hash-iteration probes), and the commands the determinism check
/// must not replay.
fn collect_methods(
    imp: &mut ItemImpl,
    name: &Ident,
    errors: &mut Vec<syn::Error>,
) -> (Vec<Method>, Vec<(syn::Member, Span)>, Vec<Ident>) {
    let mut methods: Vec<Method> = Vec::new();
    let mut iterated = Vec::new();
    // Commands whose method allowed non-determinism: never replayed by the
    // determinism check (they may do IO).
    let mut not_replayed: Vec<Ident> = Vec::new();
    for item in &mut imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let attrs = method_attrs(&f.attrs, errors);
        f.attrs.retain(|a| !is_ours(a));
        if attrs.skip {
            continue;
        }
        if let Some(m) = analyse(f, name, errors) {
            if m.kind == Kind::Command {
                let found = determinism::scan(&f.block, &attrs.allowed);
                errors.extend(found.errors);
                iterated.extend(found.iterated);
                // A command allowed to read a clock, randomness, the
                // environment or to do IO differs (or acts) when run again;
                // one allowed to iterate a hash collection claims the order
                // cannot matter, which the replay checks.
                if attrs.allowed.iter().any(|a| a != "hash_iteration") {
                    not_replayed.push(m.variant.clone());
                }
            }
            if let Some(prev) = methods.iter().find(|p| p.variant == m.variant) {
                errors.push(syn::Error::new_spanned(
                    &m.name,
                    format!(
                        "`{}` and `{}` would both become the variant `{}`: rename one",
                        prev.name, m.name, m.variant
                    ),
                ));
                continue;
            }
            methods.push(m);
        }
    }
    (methods, iterated, not_replayed)
}

#[cfg(test)]
mod tests;
