//! Parsing: the annotated trait, split into the parts the later stages read.
//!
//! Parsing only fails on input that is not a trait at all; every rule about
//! what a service may contain is checked in [`crate::valid`], so that one
//! compile reports all the mistakes at once.

use proc_macro2::{Span, TokenStream};

/// The trait under `#[plexus::service]`.
pub struct Contract {
    pub item: syn::ItemTrait,
    pub docs: Vec<String>,
    /// Non-doc attributes on the trait, kept for the generated trait.
    pub attrs: Vec<syn::Attribute>,
    pub methods: Vec<Method>,
    /// Trait items that are not methods; each becomes an error.
    pub other_items: Vec<syn::TraitItem>,
}

/// One method of the trait, with its Plexus attributes pulled out.
pub struct Method {
    pub sig: syn::Signature,
    pub default_body: Option<syn::Block>,
    pub docs: Vec<String>,
    pub oneway: Vec<syn::Attribute>,
    pub idempotent: Vec<syn::Attribute>,
    pub role: Vec<syn::Attribute>,
    /// Lint and deprecation attributes, carried onto generated methods.
    pub passthrough: Vec<syn::Attribute>,
    /// Attributes Plexus does not know; each becomes an error.
    pub unknown: Vec<syn::Attribute>,
}

/// Attributes that mean the same on the generated trait and client as on
/// the contract, so they are carried over instead of rejected.
const PASSTHROUGH: &[&str] = &["allow", "expect", "warn", "deny", "deprecated"];

impl Contract {
    pub fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let item: syn::ItemTrait = syn::parse2(tokens.clone()).map_err(|_| {
            syn::Error::new(
                first_token_span(tokens),
                "#[plexus::service] goes on a trait, e.g. `pub trait Chat { async fn post(&self, m: Message) -> Result<Receipt, Reject>; }`",
            )
        })?;
        let (docs, attrs) = split_docs(&item.attrs);
        let mut methods = Vec::new();
        let mut other_items = Vec::new();
        for trait_item in &item.items {
            match trait_item {
                syn::TraitItem::Fn(f) => methods.push(Method::parse(f)),
                other => other_items.push(other.clone()),
            }
        }
        Ok(Contract {
            item,
            docs,
            attrs,
            methods,
            other_items,
        })
    }
}

impl Method {
    fn parse(f: &syn::TraitItemFn) -> Self {
        let mut method = Method {
            sig: f.sig.clone(),
            default_body: f.default.clone(),
            docs: Vec::new(),
            oneway: Vec::new(),
            idempotent: Vec::new(),
            role: Vec::new(),
            passthrough: Vec::new(),
            unknown: Vec::new(),
        };
        for attr in &f.attrs {
            let path = attr.path();
            if path.is_ident("doc") {
                if let Some(line) = doc_line(attr) {
                    method.docs.push(line);
                }
            } else if path.is_ident("oneway") {
                method.oneway.push(attr.clone());
            } else if path.is_ident("idempotent") {
                method.idempotent.push(attr.clone());
            } else if path.is_ident("role") {
                method.role.push(attr.clone());
            } else if PASSTHROUGH.iter().any(|name| path.is_ident(name)) {
                method.passthrough.push(attr.clone());
            } else {
                method.unknown.push(attr.clone());
            }
        }
        method
    }
}

/// Splits `#[doc]` lines from the other attributes.
fn split_docs(attrs: &[syn::Attribute]) -> (Vec<String>, Vec<syn::Attribute>) {
    let mut docs = Vec::new();
    let mut rest = Vec::new();
    for attr in attrs {
        match doc_line(attr) {
            Some(line) => docs.push(line),
            None => rest.push(attr.clone()),
        }
    }
    (docs, rest)
}

/// The text of a `/// line` or `#[doc = "line"]`, without the conventional leading space.
fn doc_line(attr: &syn::Attribute) -> Option<String> {
    if !attr.path().is_ident("doc") {
        return None;
    }
    let syn::Meta::NameValue(nv) = &attr.meta else {
        return None;
    };
    let syn::Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Str(s),
        ..
    }) = &nv.value
    else {
        return None;
    };
    let text = s.value();
    Some(text.strip_prefix(' ').unwrap_or(&text).to_owned())
}

fn first_token_span(tokens: TokenStream) -> Span {
    tokens
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}
