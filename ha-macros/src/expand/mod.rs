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

use crate::determinism;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, Pat, ReturnType,
    Type, Visibility,
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
                ok = false;
            } else if let ContextArg::Other = form {
                errors.push(syn::Error::new_spanned(
                    &pt.ty,
                    "take `&ApplyContext`: a command borrows its context, it does not own or \
                     change it",
                ));
                ok = false;
            }
            context_at = Some(k);
            continue;
        }
        let Pat::Ident(pi) = &*pt.pat else {
            errors.push(syn::Error::new_spanned(
                &pt.pat,
                "use a plain argument name: it becomes a field of the command",
            ));
            ok = false;
            continue;
        };
        if let Some((span, hint)) = unserializable(&pt.ty) {
            errors.push(syn::Error::new(span, hint));
            ok = false;
            continue;
        }
        args.push((pi.ident.clone(), replace_self(&pt.ty, name)));
    }
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
        ok = false;
    }
    let docs = f
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    // `_` or `__` leaves nothing to name a variant with.
    let variant = camel(&plain);
    if variant.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.ident,
            "a method named only with underscores cannot name a command or query: rename it, or \
             add `#[replicated(skip)]`",
        ));
        ok = false;
    }
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

/// The attribute: behaviour side.
pub fn replicated(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut imp: ItemImpl = match syn::parse2(item) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let mut errors: Vec<syn::Error> = Vec::new();
    // `prefix = "Stem"`: the generated items are `StemCommand`, ...,
    // `StemClient` instead of the type's name (for a module that already
    // has a type of one of those names).
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
    let name = match &*imp.self_ty {
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
    };
    let mut methods: Vec<Method> = Vec::new();
    let mut iterated = Vec::new();
    // Commands whose method allowed non-determinism: never replayed by the
    // determinism check (they may do IO).
    let mut not_replayed: Vec<Ident> = Vec::new();
    for item in &mut imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let attrs = method_attrs(&f.attrs, &mut errors);
        f.attrs.retain(|a| !is_ours(a));
        if attrs.skip {
            continue;
        }
        if let Some(m) = analyse(f, &name, &mut errors) {
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

fn generate(name: &Ident, stem: &Ident, methods: &[Method], not_replayed: &[Ident]) -> TokenStream {
    let cmd_ty = format_ident!("{}Command", stem);
    let qry_ty = format_ident!("{}Query", stem);
    let cmd_out = format_ident!("{}CommandOutput", stem);
    let qry_out = format_ident!("{}QueryOutput", stem);
    let client = format_ident!("{}Client", stem);
    // Every argument and return type, once. A type that is not serializable
    // gets one error, from `checks`, at its first use in a signature. Every
    // generated item that needs the types serializable (serde's impls of
    // the enums, `impl StateMachine`, `impl Replicated`, the client's
    // methods) holds only where they are (`value_bounds`), so nothing else
    // fails with it. `for<'__ha>` makes each bound one rustc checks where it
    // is used rather than rejecting it where it is written (false "trivial
    // bounds" are errors on stable).
    let mut values: Vec<&Type> = Vec::new();
    for t in methods
        .iter()
        .flat_map(|m| m.args.iter().map(|(_, t)| t).chain(&m.ret))
    {
        let key = quote!(#t).to_string();
        if !values.iter().any(|v| quote!(#v).to_string() == key) {
            values.push(t);
        }
    }
    let value_bounds = quote! { #(for<'__ha> #values: ::ha_core::__private::ValueBound),* };
    let (checks, value_where) = if values.is_empty() {
        Default::default()
    } else {
        (
            quote! {
                const _: () = {
                    #(let _ = <#values as ::ha_core::sm::ReplicatedValue>::__ha_check;)*
                };
            },
            quote! { where #value_bounds },
        )
    };
    // One item holding `where` the values are serializable (serde's derives
    // copy an enum's `where` clause to their impls). rustdoc gets it without
    // the bounds: they hold whenever the crate compiles, and would only
    // clutter the pages of the type, its client and its enums.
    let bounded = |item: &dyn Fn(&TokenStream) -> TokenStream| {
        if value_where.is_empty() {
            item(&value_where)
        } else {
            let (with, without) = (item(&value_where), item(&TokenStream::new()));
            quote! {
                #[cfg(not(doc))]
                #with
                #[cfg(doc)]
                #without
            }
        }
    };
    let serde_derive = quote! {
        #[derive(::ha_core::__private::serde::Serialize, ::ha_core::__private::serde::Deserialize)]
        #[serde(crate = "::ha_core::__private::serde")]
        // A private replicated type is as private in its commands' fields
        // (an argument of its own type) as it is.
        #[allow(missing_docs, private_bounds, private_interfaces)]
    };
    // Hygienic (mixed-site): no user argument, whatever its name, can
    // shadow it.
    let apply_context = Ident::new("apply_context", Span::mixed_site());
    let (mut cmd_variants, mut qry_variants) = (Vec::new(), Vec::new());
    let (mut cmd_outs, mut qry_outs) = (Vec::new(), Vec::new());
    let (mut cmd_arms, mut qry_arms) = (Vec::new(), Vec::new());
    let mut client_methods = Vec::new();
    for m in methods {
        let (variant, mname) = (&m.variant, &m.name);
        let fields: Vec<&Ident> = m.args.iter().map(|(i, _)| i).collect();
        let types: Vec<&Type> = m.args.iter().map(|(_, t)| t).collect();
        let ret_ty = m.ret.clone().unwrap_or_else(|| syn::parse_quote!(()));
        let docs = &m.docs;
        let variant_def = quote! { #variant { #(#fields: #types),* } };
        // The call, with the context spliced back in at its place.
        let mut call_args: Vec<TokenStream> = fields.iter().map(|f| quote!(#f)).collect();
        if let Some(at) = m.context_at {
            // The context's own, hygienic name: no argument shadows it (an
            // argument named `ctx` did).
            call_args.insert(at.min(call_args.len()), quote!(#apply_context));
        }
        let params = m.args.iter().map(|(i, t)| quote!(#i: #t));
        let (enum_ty, out_ty, call) = match m.kind {
            Kind::Command => (&cmd_ty, &cmd_out, quote!(command)),
            Kind::Query => (&qry_ty, &qry_out, quote!(query)),
        };
        let arm = quote_spanned! {mname.span()=>
            #enum_ty::#variant { #(#fields),* } => #out_ty::#variant(self.#mname(#(#call_args),*))
        };
        let out_variant = quote! { #variant(#ret_ty) };
        client_methods.push(quote! {
            #(#docs)*
            pub async fn #mname(&self, #(#params),*) -> ::std::result::Result<#ret_ty, ::ha_core::Error> {
                #[allow(unreachable_patterns)]
                match self.inner.#call(&#enum_ty::#variant { #(#fields),* }).await? {
                    #out_ty::#variant(v) => ::std::result::Result::Ok(v),
                    _ => ::std::result::Result::Err(::ha_core::Error::Unknown(
                        "the cluster answered for another method".into(),
                    )),
                }
            }
        });
        match m.kind {
            Kind::Command => {
                cmd_variants.push(variant_def);
                cmd_outs.push(out_variant);
                cmd_arms.push(arm);
            }
            Kind::Query => {
                qry_variants.push(variant_def);
                qry_outs.push(out_variant);
                qry_arms.push(arm);
            }
        }
    }
    let name_str = name.to_string();
    let doc_client = format!(
        "The typed client of [`{name_str}`]: one async method per command and query. \
         Cheap to clone; clones share one session."
    );
    let doc_cmd = format!("The commands of [`{name_str}`] (generated by `#[replicated]`).");
    let doc_qry = format!("The queries of [`{name_str}`] (generated by `#[replicated]`).");
    let doc_cout = format!("What the commands of [`{name_str}`] return.");
    let doc_qout = format!("What the queries of [`{name_str}`] return.");
    let client_items = quote! {
        /// The generic client underneath.
        pub fn inner(&self) -> &::ha_core::Client<#name> {
            &self.inner
        }
        /// A client sharing this one's session whose queries have the given consistency.
        pub fn with_consistency(&self, consistency: ::ha_core::Consistency) -> Self {
            #client { inner: self.inner.with_consistency(consistency) }
        }
        /// A client sharing this one's session whose calls time out after `timeout`.
        pub fn with_timeout(&self, timeout: ::std::time::Duration) -> Self {
            #client { inner: self.inner.with_timeout(timeout) }
        }
        #(#client_methods)*
    };
    let enums = [
        (&doc_cmd, &cmd_ty, &cmd_variants),
        (&doc_qry, &qry_ty, &qry_variants),
        (&doc_cout, &cmd_out, &cmd_outs),
        (&doc_qout, &qry_out, &qry_outs),
    ]
    .map(|(doc, ty, variants)| {
        bounded(&|w| {
            quote! {
                #[doc = #doc]
                #serde_derive
                pub enum #ty #w { #(#variants),* }
            }
        })
    });
    let client_impl = bounded(&|w| quote! { impl #client #w { #client_items } });
    let replicated_impl = bounded(&|w| {
        quote! {
            impl ::ha_core::sm::Replicated for #name #w {
                type Client = #client;
            }
        }
    });
    let replay_safe = if not_replayed.is_empty() {
        TokenStream::new()
    } else {
        quote! {
            fn replay_safe(command: &#cmd_ty) -> ::core::primitive::bool {
                !::core::matches!(command, #(#cmd_ty::#not_replayed { .. })|*)
            }
        }
    };
    let sm_impl = bounded(&|w| {
        quote! {
            impl ::ha_core::sm::StateMachine for #name #w {
                type Command = #cmd_ty;
                type Query = #qry_ty;
                type CommandOutput = #cmd_out;
                type QueryOutput = #qry_out;
                #[allow(unused_variables)]
                fn apply_command(&mut self, command: #cmd_ty, #apply_context: &::ha_core::sm::ApplyContext) -> #cmd_out {
                    match command { #(#cmd_arms),* }
                }
                fn run_query(&self, query: #qry_ty) -> #qry_out {
                    match query { #(#qry_arms),* }
                }
                #replay_safe
            }
        }
    });
    quote! {
        #checks

        #(#enums)*

        // Without `#[derive(Replicated)]` on the struct, this impl is the
        // one error: `ReplicatedState` is missing (its message says so).
        #replicated_impl

        #sm_impl

        #[doc = #doc_client]
        #[derive(Clone)]
        pub struct #client {
            inner: ::ha_core::Client<#name>,
        }

        impl ::std::convert::From<::ha_core::Client<#name>> for #client {
            fn from(inner: ::ha_core::Client<#name>) -> Self {
                #client { inner }
            }
        }

        #client_impl
    }
}

#[cfg(test)]
mod tests;
