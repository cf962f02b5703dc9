//! Compile errors of the macros: each case must fail with a message that
//! points at the offending token and says what to write instead. The
//! expected output lives next to each case (`tests/ui/*.stderr`);
//! `TRYBUILD=overwrite` rewrites it after a reviewed change.

#[test]
fn unsupported_signatures_are_compile_errors_with_hints() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
