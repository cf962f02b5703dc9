//! The items `#[replicated]` generates for a checked impl block: the
//! command and query enums and their outputs, `impl StateMachine` (the
//! dispatch), `impl Replicated`, and the typed client.
//!
//! Invariant: every generated item that needs the signature's types
//! serializable holds only `where` they are (`value_bounds`), so a type
//! that is not serializable fails exactly one bound, at its first use in a
//! signature (see the parent module's invariant 3).

use super::*;

/// A generated item, given the `where` clause it holds under.
type Item<'a> = &'a dyn Fn(&TokenStream) -> TokenStream;

/// The generated items' names, from the stem (the type's name or its
/// `prefix`).
struct Names {
    cmd_ty: Ident,
    qry_ty: Ident,
    cmd_out: Ident,
    qry_out: Ident,
    client: Ident,
}

/// What the methods add to the generated enums, the dispatch and the
/// client.
#[derive(Default)]
struct Parts {
    cmd_variants: Vec<TokenStream>,
    qry_variants: Vec<TokenStream>,
    cmd_outs: Vec<TokenStream>,
    qry_outs: Vec<TokenStream>,
    cmd_arms: Vec<TokenStream>,
    qry_arms: Vec<TokenStream>,
    client_methods: Vec<TokenStream>,
}

pub(super) fn generate(
    name: &Ident,
    stem: &Ident,
    methods: &[Method],
    not_replayed: &[Ident],
) -> TokenStream {
    let names = Names {
        cmd_ty: format_ident!("{}Command", stem),
        qry_ty: format_ident!("{}Query", stem),
        cmd_out: format_ident!("{}CommandOutput", stem),
        qry_out: format_ident!("{}QueryOutput", stem),
        client: format_ident!("{}Client", stem),
    };
    let (checks, value_where) = value_checks(methods);
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
    // Hygienic (mixed-site): no user argument, whatever its name, can
    // shadow it.
    let apply_context = Ident::new("apply_context", Span::mixed_site());
    let parts = method_parts(&names, methods, &apply_context);
    let enums = enums(name, &names, &parts, &bounded);
    let client = &names.client;
    let client_items = client_items(name, client, &parts.client_methods);
    let client_impl = bounded(&|w| quote! { impl #client #w { #client_items } });
    let replicated_impl = bounded(&|w| {
        quote! {
            impl ::ha_core::sm::Replicated for #name #w {
                type Client = #client;
            }
        }
    });
    let sm_impl = bounded(&|w| sm_impl(name, &names, &parts, &apply_context, not_replayed, w));
    let doc_client = format!(
        "The typed client of [`{name}`]: one async method per command and query. \
         Cheap to clone; clones share one session."
    );
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

/// `impl StateMachine`: the dispatch of commands and queries to the
/// methods, and which commands the determinism check may replay.
fn sm_impl(
    name: &Ident,
    names: &Names,
    parts: &Parts,
    apply_context: &Ident,
    not_replayed: &[Ident],
    w: &TokenStream,
) -> TokenStream {
    let Names {
        cmd_ty,
        qry_ty,
        cmd_out,
        qry_out,
        ..
    } = names;
    let (cmd_arms, qry_arms) = (&parts.cmd_arms, &parts.qry_arms);
    let replay_safe = if not_replayed.is_empty() {
        TokenStream::new()
    } else {
        quote! {
            fn replay_safe(command: &#cmd_ty) -> ::core::primitive::bool {
                !::core::matches!(command, #(#cmd_ty::#not_replayed { .. })|*)
            }
        }
    };
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
}

/// Every argument and return type, once: the checks (one error per type
/// that is not serializable, from `checks`, at its first use in a
/// signature) and the `where` clause every generated item that needs them
/// serializable holds under (`value_bounds`), so nothing else fails with
/// it. `for<'__ha>` makes each bound one rustc checks where it is used
/// rather than rejecting it where it is written (false "trivial bounds" are
/// errors on stable).
fn value_checks(methods: &[Method]) -> (TokenStream, TokenStream) {
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
    if values.is_empty() {
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
    }
}

/// Each method's variant, output variant, dispatch arm and client method.
fn method_parts(names: &Names, methods: &[Method], apply_context: &Ident) -> Parts {
    let mut parts = Parts::default();
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
            Kind::Command => (&names.cmd_ty, &names.cmd_out, quote!(command)),
            Kind::Query => (&names.qry_ty, &names.qry_out, quote!(query)),
        };
        let arm = quote_spanned! {mname.span()=>
            #enum_ty::#variant { #(#fields),* } => #out_ty::#variant(self.#mname(#(#call_args),*))
        };
        let out_variant = quote! { #variant(#ret_ty) };
        parts.client_methods.push(quote! {
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
        let (variants, outs, arms) = match m.kind {
            Kind::Command => (
                &mut parts.cmd_variants,
                &mut parts.cmd_outs,
                &mut parts.cmd_arms,
            ),
            Kind::Query => (
                &mut parts.qry_variants,
                &mut parts.qry_outs,
                &mut parts.qry_arms,
            ),
        };
        variants.push(variant_def);
        outs.push(out_variant);
        arms.push(arm);
    }
    parts
}

/// The command and query enums and their outputs, each under `bounded`.
fn enums(
    name: &Ident,
    names: &Names,
    parts: &Parts,
    bounded: &dyn Fn(Item<'_>) -> TokenStream,
) -> [TokenStream; 4] {
    let serde_derive = quote! {
        #[derive(::ha_core::__private::serde::Serialize, ::ha_core::__private::serde::Deserialize)]
        #[serde(crate = "::ha_core::__private::serde")]
        // A private replicated type is as private in its commands' fields
        // (an argument of its own type) as it is.
        #[allow(missing_docs, private_bounds, private_interfaces)]
    };
    let doc_cmd = format!("The commands of [`{name}`] (generated by `#[replicated]`).");
    let doc_qry = format!("The queries of [`{name}`] (generated by `#[replicated]`).");
    let doc_cout = format!("What the commands of [`{name}`] return.");
    let doc_qout = format!("What the queries of [`{name}`] return.");
    [
        (&doc_cmd, &names.cmd_ty, &parts.cmd_variants),
        (&doc_qry, &names.qry_ty, &parts.qry_variants),
        (&doc_cout, &names.cmd_out, &parts.cmd_outs),
        (&doc_qout, &names.qry_out, &parts.qry_outs),
    ]
    .map(|(doc, ty, variants)| {
        bounded(&|w| {
            quote! {
                #[doc = #doc]
                #serde_derive
                pub enum #ty #w { #(#variants),* }
            }
        })
    })
}

/// The typed client's own methods, then one per command and query.
fn client_items(name: &Ident, client: &Ident, client_methods: &[TokenStream]) -> TokenStream {
    quote! {
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
    }
}
