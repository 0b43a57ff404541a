//! Every misuse of `#[plexus::service]` is a compile error at the right
//! token. The expected messages live beside the cases in `tests/ui/`.

#[test]
fn service_macro_misuse_is_a_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}
