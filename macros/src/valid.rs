//! Validation: every rule a service trait must follow, each broken rule a
//! compile error pointing at the token that broke it.
//!
//! The checks collect their errors instead of stopping at the first one, so
//! a user fixing a new contract sees every mistake in one build.

use proc_macro2::Span;
use quote::ToTokens;

use crate::args::ServiceArgs;
use crate::ast::{Contract, Method};
use plexus_codegen::model::CallKind;

use plexus_codegen::RESERVED_METHOD_NAMES as RESERVED;

/// A contract that passed every check.
pub struct Checked {
    pub contract: Contract,
    pub package: String,
    pub version: u32,
    pub roles: Vec<String>,
    pub methods: Vec<CheckedMethod>,
}

/// A method that passed every check, classified by call kind.
pub struct CheckedMethod {
    pub name: syn::Ident,
    pub kind: CallKind,
    /// The `CallContext` parameter as written, if any.
    pub context: Option<(syn::Ident, syn::Type)>,
    /// Request parameter types as written (`Streaming<Message>`).
    pub declared_params: Vec<syn::Type>,
    /// The return type as written.
    pub declared_output: Option<syn::Type>,
    /// Request parameters (for streams: the one streaming parameter, item type).
    pub params: Vec<(syn::Ident, syn::Type)>,
    /// Reply type, or stream item type.
    pub reply: syn::Type,
    pub fallible_items: bool,
    pub role: Option<String>,
    pub idempotent: bool,
    pub docs: Vec<String>,
    pub attrs: Vec<syn::Attribute>,
}

/// A parameter: its name and its type as written.
type NamedType = (syn::Ident, syn::Type);

/// Accumulates errors; `finish` fails with all of them combined.
#[derive(Default)]
struct Errors {
    combined: Option<syn::Error>,
    count: usize,
}

impl Errors {
    /// An error covering all of `tokens`, first to last.
    fn push(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.add(syn::Error::new_spanned(tokens, message));
    }

    fn push_span(&mut self, span: Span, message: impl std::fmt::Display) {
        self.add(syn::Error::new(span, message));
    }

    fn add(&mut self, error: syn::Error) {
        self.count += 1;
        match &mut self.combined {
            Some(existing) => existing.combine(error),
            None => self.combined = Some(error),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.combined.map_or(Ok(()), Err)
    }
}

/// Checks the service arguments and the trait, and classifies each method.
pub fn check(args: &ServiceArgs, contract: Contract) -> syn::Result<Checked> {
    let mut errors = Errors::default();
    let package = check_package(args, &mut errors);
    let version = check_version(args, &mut errors);
    let roles = check_roles(args, &mut errors);
    check_trait(&contract, &mut errors);

    let methods = contract
        .methods
        .iter()
        .filter_map(|method| check_method(method, &roles, &mut errors))
        .collect();
    errors.finish()?;
    Ok(Checked {
        contract,
        package,
        version,
        roles,
        methods,
    })
}

fn check_package(args: &ServiceArgs, errors: &mut Errors) -> String {
    let Some(lit) = &args.package else {
        return String::new();
    };
    let package = lit.value();
    let valid = !package.is_empty()
        && package.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if !valid {
        errors.push(
            lit,
            "a package is dotted identifiers, e.g. `chat` or `acme.inventory`",
        );
    }
    package
}

fn check_version(args: &ServiceArgs, errors: &mut Errors) -> u32 {
    let Some(lit) = &args.version else {
        return 1;
    };
    match lit.base10_parse::<u32>() {
        Ok(0) | Err(_) => {
            errors.push(
                lit,
                "a contract version is a whole number from 1 to 4294967295",
            );
            1
        }
        Ok(v) => v,
    }
}

fn check_roles(args: &ServiceArgs, errors: &mut Errors) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    for lit in &args.roles {
        let role = lit.value();
        if !is_role_name(&role) {
            errors.push(
                lit,
                "a role name is letters, digits, `_` or `-`, e.g. \"member\"",
            );
        } else if roles.contains(&role) {
            errors.push(lit, format!("role \"{role}\" is listed twice"));
        } else {
            roles.push(role);
        }
    }
    roles
}

fn is_role_name(role: &str) -> bool {
    !role.is_empty()
        && role
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn check_trait(contract: &Contract, errors: &mut Errors) {
    let item = &contract.item;
    if let Some(unsafety) = &item.unsafety {
        errors.push(unsafety, "a service trait cannot be `unsafe`");
    }
    if let Some(auto) = &item.auto_token {
        errors.push(auto, "a service trait cannot be an auto trait");
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.push(
            &item.generics,
            "a service trait cannot be generic: every operation has one concrete message type on the wire",
        );
    }
    if !item.supertraits.is_empty() {
        errors.push(
            &item.supertraits,
            "a service trait cannot have supertraits; the generated handler adds the bounds it needs (`Send + Sync + 'static`)",
        );
    }
    for item in &contract.other_items {
        errors.push(
            item,
            "a service trait holds only `async fn` operations; move constants, types and macros out of it",
        );
    }
    if contract.methods.is_empty() {
        errors.push(
            &item.ident,
            "a service needs at least one operation, e.g. `async fn ping(&self) -> Result<(), Reject>;`",
        );
    }
}

fn check_method(method: &Method, roles: &[String], errors: &mut Errors) -> Option<CheckedMethod> {
    let errors_before = errors.count;
    let sig = &method.sig;
    let name = sig.ident.clone();

    if RESERVED.contains(&name.to_string().as_str()) {
        errors.push(
            &name,
            format!(
                "`{name}` is a method of every generated client or fanout; give this operation another name"
            ),
        );
    }
    if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token,
            "service methods must be `async fn`: Plexus awaits every handler",
        );
    }
    if let Some(constness) = &sig.constness {
        errors.push(constness, "a service method cannot be `const`");
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(unsafety, "a service method cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.push(abi, "a service method cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            &sig.generics,
            "a service method cannot be generic: the wire carries one concrete type per operation",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(variadic, "a service method cannot be variadic");
    }
    if let Some(body) = &method.default_body {
        errors.push(
            body,
            "a service method has no default body; implement it on your type instead",
        );
    }
    for attr in &method.unknown {
        let written = attr.path().to_token_stream().to_string().replace(' ', "");
        let hint = match near_miss(&written) {
            Some(known) => format!(" (did you mean `#[{known}]`?)"),
            None => String::new(),
        };
        errors.push(
            attr.path(),
            format!(
                "unknown attribute `#[{written}]` on a service method{hint}; Plexus understands #[oneway], #[idempotent] and #[role(\"name\")]"
            ),
        );
    }

    let oneway = check_flag(&method.oneway, "oneway", errors);
    let idempotent = check_flag(&method.idempotent, "idempotent", errors);
    let role = check_role(&method.role, roles, errors);

    check_receiver(sig, errors);
    let (context, params) = check_params(sig, errors);
    let declared_params: Vec<syn::Type> = params.iter().map(|(_, ty)| ty.clone()).collect();
    let streaming: Vec<bool> = params
        .iter()
        .map(|(_, ty)| streaming_item(ty).is_some())
        .collect();
    let streams_requests = streaming.iter().any(|s| *s);
    if streams_requests && params.len() != 1 {
        for ((_, ty), is_stream) in params.iter().zip(&streaming) {
            if *is_stream {
                errors.push(
                    ty,
                    "a `Streaming<T>` argument must be the operation's only argument",
                );
            }
        }
    }
    let params: Vec<(syn::Ident, syn::Type)> = params
        .into_iter()
        .map(|(ident, ty)| {
            let ty = streaming_item(&ty).cloned().unwrap_or(ty);
            check_owned(&ty, errors);
            (ident, ty)
        })
        .collect();

    let (kind, reply, fallible_items) = match (&oneway, &sig.output) {
        (Some(attr), output) => {
            if let syn::ReturnType::Type(_, ty) = output {
                errors.push(
                    ty,
                    "a #[oneway] operation has no reply: remove the return type, or drop #[oneway] for an acked call",
                );
            }
            if streams_requests {
                errors.push(
                    attr,
                    "a #[oneway] operation sends one message; it cannot take a `Streaming<T>` argument",
                );
            }
            (CallKind::OneWay, syn::parse_quote!(()), false)
        }
        (None, syn::ReturnType::Default) => {
            errors.push(
                &sig.ident,
                "an acked operation returns `Result<Reply, Reject>` (`Result<(), Reject>` for a bare ack); mark fire-and-forget operations #[oneway]",
            );
            (CallKind::Unary, syn::parse_quote!(()), false)
        }
        (None, syn::ReturnType::Type(_, ty)) => match rejectable_ok(ty) {
            None => {
                errors.push(
                    ty,
                    "an acked operation returns `Result<Reply, Reject>`, where `Reject` is `plexus::Reject`",
                );
                (CallKind::Unary, syn::parse_quote!(()), false)
            }
            Some(ok) => match single_generic(ok, "BoxStream") {
                Some(item) => {
                    let (item, fallible) = match rejectable_ok(item) {
                        Some(inner) => (inner.clone(), true),
                        None => (item.clone(), false),
                    };
                    check_owned(&item, errors);
                    let kind = if streams_requests {
                        CallKind::Bidi
                    } else {
                        CallKind::ServerStream
                    };
                    (kind, item, fallible)
                }
                None => {
                    check_owned(ok, errors);
                    let kind = if streams_requests {
                        CallKind::ClientStream
                    } else {
                        CallKind::Unary
                    };
                    (kind, ok.clone(), false)
                }
            },
        },
    };

    if errors.count > errors_before {
        return None;
    }
    Some(CheckedMethod {
        name,
        kind,
        context,
        declared_params,
        declared_output: match &sig.output {
            syn::ReturnType::Default => None,
            syn::ReturnType::Type(_, ty) => Some((**ty).clone()),
        },
        params,
        reply,
        fallible_items,
        role,
        idempotent: idempotent.is_some(),
        docs: method.docs.clone(),
        attrs: method.passthrough.clone(),
    })
}

/// The Plexus attribute a misspelled one was probably meant to be.
fn near_miss(written: &str) -> Option<&'static str> {
    let squashed: String = written
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    [
        ("oneway", "oneway"),
        ("fireandforget", "oneway"),
        ("idempotent", "idempotent"),
        ("idempotant", "idempotent"),
        ("role", "role"),
        ("roles", "role"),
    ]
    .iter()
    .find(|(spelling, _)| squashed == *spelling)
    .map(|(_, known)| *known)
}

/// A marker attribute like `#[oneway]`: bare, at most once.
fn check_flag<'a>(
    attrs: &'a [syn::Attribute],
    name: &str,
    errors: &mut Errors,
) -> Option<&'a syn::Attribute> {
    for attr in attrs.iter().skip(1) {
        errors.push(attr, format!("#[{name}] is given twice; keep one"));
    }
    let first = attrs.first()?;
    if !matches!(first.meta, syn::Meta::Path(_)) {
        errors.push(
            &first.meta,
            format!("#[{name}] takes no arguments; write just `#[{name}]`"),
        );
    }
    Some(first)
}

fn check_role(attrs: &[syn::Attribute], roles: &[String], errors: &mut Errors) -> Option<String> {
    for attr in attrs.iter().skip(1) {
        errors.push(
            attr,
            "#[role] is given twice; an operation has one serving role",
        );
    }
    let attr = attrs.first()?;
    let lit = match attr.parse_args::<syn::LitStr>() {
        Ok(lit) => lit,
        Err(_) => {
            errors.push(
                &attr.meta,
                "expected a role name in quotes, e.g. `#[role(\"host\")]`",
            );
            return None;
        }
    };
    let role = lit.value();
    if roles.is_empty() {
        errors.push(
            &lit,
            format!("role \"{role}\" is not declared: list the service's roles in `#[plexus::service(roles = [\"{role}\"])]`"),
        );
    } else if !roles.contains(&role) {
        errors.push(
            &lit,
            format!(
                "role \"{role}\" is not one of the service's roles ({})",
                roles
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    Some(role)
}

fn check_receiver(sig: &syn::Signature, errors: &mut Errors) {
    match sig.inputs.first() {
        Some(syn::FnArg::Receiver(receiver)) => {
            if receiver.reference.is_none() || receiver.colon_token.is_some() {
                errors.push(
                    receiver,
                    "a service method takes `&self`: one implementation serves every call, so it cannot be consumed",
                );
            } else if let Some(mutability) = &receiver.mutability {
                errors.push(
                    mutability,
                    "a service method takes `&self`, not `&mut self`: calls run concurrently; for `&mut self` state implement the generated `<Service>Actor` trait and serve `plexus::node::Actor::spawn(state)`, or keep the state behind a lock",
                );
            }
        }
        _ => errors.push_span(
            sig.paren_token.span.join(),
            "a service method takes `&self` first: one implementation serves every call",
        ),
    }
}

/// Splits the typed parameters into an optional leading `CallContext` and the request parameters.
fn check_params(sig: &syn::Signature, errors: &mut Errors) -> (Option<NamedType>, Vec<NamedType>) {
    let mut context = None;
    let mut params = Vec::new();
    for (index, input) in sig.inputs.iter().enumerate() {
        let syn::FnArg::Typed(pat_type) = input else {
            continue;
        };
        let ident = match &*pat_type.pat {
            syn::Pat::Ident(pat)
                if pat.by_ref.is_none() && pat.mutability.is_none() && pat.subpat.is_none() =>
            {
                Some(pat.ident.clone())
            }
            other => {
                errors.push(
                    other,
                    "an operation argument is a plain name (`name: Type`); the name is reused on the generated client",
                );
                None
            }
        };
        if is_call_context(&pat_type.ty) {
            if index == 1 {
                context = ident.map(|ident| (ident, (*pat_type.ty).clone()));
            } else {
                errors.push(
                    &pat_type.ty,
                    "a `CallContext` argument comes first, right after `&self`",
                );
            }
            continue;
        }
        if let Some(ident) = ident {
            params.push((ident, (*pat_type.ty).clone()));
        }
    }
    (context, params)
}

/// Messages are decoded into owned values, so a message type cannot borrow.
fn check_owned(ty: &syn::Type, errors: &mut Errors) {
    match ty {
        syn::Type::Reference(r) => errors.push(
            r,
            "messages are decoded into owned values: use an owned type (`String`, `Vec<u8>`, ...) instead of a reference",
        ),
        syn::Type::ImplTrait(_) | syn::Type::TraitObject(_) | syn::Type::Infer(_) | syn::Type::Never(_) | syn::Type::BareFn(_) | syn::Type::Ptr(_) | syn::Type::Macro(_) | syn::Type::Verbatim(_) => errors.push(
            ty,
            "a message type must be a concrete, serializable type",
        ),
        syn::Type::Paren(p) => check_owned(&p.elem, errors),
        syn::Type::Group(g) => check_owned(&g.elem, errors),
        syn::Type::Tuple(t) => t.elems.iter().for_each(|e| check_owned(e, errors)),
        syn::Type::Array(a) => check_owned(&a.elem, errors),
        syn::Type::Slice(s) => errors.push(s, "a message type must be sized: use `Vec<T>` instead of `[T]`"),
        syn::Type::Path(p) => {
            for segment in &p.path.segments {
                if let syn::PathArguments::AngleBracketed(args) = &segment.arguments {
                    for arg in &args.args {
                        match arg {
                            syn::GenericArgument::Type(t) => check_owned(t, errors),
                            syn::GenericArgument::Lifetime(l) if l.ident != "static" => errors.push(
                                l,
                                "messages are decoded into owned values: a message type cannot borrow",
                            ),
                            _ => {}
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn last_segment(ty: &syn::Type) -> Option<&syn::PathSegment> {
    match ty {
        syn::Type::Path(syn::TypePath { qself: None, path }) => path.segments.last(),
        syn::Type::Group(g) => last_segment(&g.elem),
        syn::Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

fn type_args(segment: &syn::PathSegment) -> Vec<&syn::Type> {
    match &segment.arguments {
        syn::PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|arg| match arg {
                syn::GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `Name<T>` → `T`.
fn single_generic<'a>(ty: &'a syn::Type, name: &str) -> Option<&'a syn::Type> {
    let segment = last_segment(ty)?;
    match (segment.ident == name, type_args(segment).as_slice()) {
        (true, [inner]) => Some(inner),
        _ => None,
    }
}

/// `Streaming<T>` → `T`.
fn streaming_item(ty: &syn::Type) -> Option<&syn::Type> {
    single_generic(ty, "Streaming")
}

/// `Result<T, Reject>` → `T`.
fn rejectable_ok(ty: &syn::Type) -> Option<&syn::Type> {
    let segment = last_segment(ty)?;
    match (segment.ident == "Result", type_args(segment).as_slice()) {
        (true, [ok, err]) if last_segment(err).is_some_and(|s| s.ident == "Reject") => Some(ok),
        _ => None,
    }
}

fn is_call_context(ty: &syn::Type) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == "CallContext" && s.arguments.is_none())
}
