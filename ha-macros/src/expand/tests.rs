use super::*;

fn pretty(ts: TokenStream) -> String {
    prettyplease::unparse(&syn::parse2::<syn::File>(ts).expect("generated code parses"))
}

/// The expansion of a small type, compared with a reviewed copy so any
/// change to generated code shows in review. `UPDATE_EXPANSION=1`
/// rewrites the copy.
#[test]
fn expansion_matches_the_reviewed_snapshot() {
    let derive_out = derive(quote! {
        #[derive(Default, Serialize, Deserialize, Replicated)]
        pub struct Counter { value: i64 }
    });
    let attr_out = replicated(
        TokenStream::new(),
        quote! {
            impl Counter {
                /// Adds `delta`; returns the new value.
                pub fn add(&mut self, delta: i64) -> i64 { self.value += delta; self.value }
                /// Stamps the time.
                pub fn touch(&mut self, ctx: &ApplyContext) { let _ = ctx; }
                /// The value.
                pub fn get(&self) -> i64 { self.value }
                #[replicated(skip)]
                pub fn local(&self) -> usize { 0 }
                fn helper(&self) {}
            }
        },
    );
    let got = format!("{}\n{}", pretty(derive_out), pretty(attr_out));
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expansion/counter.rs.txt");
    if std::env::var("UPDATE_EXPANSION").is_ok() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "the expansion changed; review it and rerun with UPDATE_EXPANSION=1:\n{got}"
    );
}
