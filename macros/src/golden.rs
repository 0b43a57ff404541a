//! The golden test of the generated code: the expansion of one contract
//! (`golden/chat.contract.rs`: every call kind and option), pretty-printed,
//! must equal the checked-in `golden/chat.expanded.rs`, so that any change to
//! what the macro and the emitter generate shows in review as a diff of that
//! file. After an intended change, rewrite it with
//! `PLEXUS_BLESS=1 cargo test -p plexus-macros --lib golden` and commit it.

use std::path::PathBuf;

const BLESS: &str = "PLEXUS_BLESS=1 cargo test -p plexus-macros --lib golden";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// The contract file's `#[plexus::service(..)]` trait, expanded by the
/// macro's own pipeline and pretty-printed.
fn expand_contract(source: &str) -> String {
    let file = syn::parse_file(source).expect("the golden contract parses");
    let mut items = file.items.into_iter();
    let (Some(syn::Item::Trait(mut contract)), None) = (items.next(), items.next()) else {
        panic!("the golden contract is one trait and nothing else");
    };
    let at = contract
        .attrs
        .iter()
        .position(|a| {
            a.path()
                .segments
                .last()
                .is_some_and(|s| s.ident == "service")
        })
        .expect("the golden contract has #[plexus::service(..)]");
    let attr = contract.attrs.remove(at);
    let args = match attr.meta {
        syn::Meta::List(list) => list.tokens,
        _ => proc_macro2::TokenStream::new(),
    };
    let expanded = crate::expand(args, quote::quote!(#contract))
        .unwrap_or_else(|e| panic!("the golden contract is rejected: {e}"));
    let file = syn::parse2::<syn::File>(expanded).expect("the expansion is a file of items");
    format!(
        "// @generated from chat.contract.rs by macros/src/golden.rs: what the macro\n\
         // and the emitter generate for it. Do not edit; rewrite it with\n\
         // `{BLESS}`.\n\n{}",
        prettyplease::unparse(&file)
    )
}

/// The first line where `a` and `b` differ, with a few lines of each around it.
fn first_difference(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let at = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    let show = |lines: &[&str]| {
        lines
            .iter()
            .enumerate()
            .skip(at.saturating_sub(2))
            .take(6)
            .map(|(n, l)| format!("{:>5} | {l}", n + 1))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "first difference at line {}:\n--- checked in\n{}\n--- generated now\n{}",
        at + 1,
        show(&e),
        show(&a)
    )
}

#[test]
fn golden_expansion_of_the_chat_contract() {
    let dir = golden_dir();
    let contract = std::fs::read_to_string(dir.join("chat.contract.rs")).expect("contract file");
    let actual = expand_contract(&contract);
    let path = dir.join("chat.expanded.rs");
    if std::env::var_os("PLEXUS_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual).expect("writing the golden file");
        return;
    }
    let Ok(expected) = std::fs::read_to_string(&path) else {
        panic!("macros/golden/chat.expanded.rs is missing; create it with\n\n    {BLESS}\n");
    };
    assert!(
        expected == actual,
        "the generated code for macros/golden/chat.contract.rs differs from \
         macros/golden/chat.expanded.rs; if the change is intended, run\n\n    {BLESS}\n\n\
         and commit the rewritten file.\n{}",
        first_difference(&expected, &actual)
    );
}

#[test]
fn the_golden_diff_names_the_first_changed_line() {
    let shown = first_difference("a\nb\nc\n", "a\nB\nc\n");
    assert!(shown.starts_with("first difference at line 2:"), "{shown}");
    assert!(
        shown.contains("    2 | b") && shown.contains("    2 | B"),
        "{shown}"
    );
}
