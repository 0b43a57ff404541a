//! Lowering: a checked trait becomes the shared `plexus_codegen` model.
//!
//! Nothing here can fail; every rule was enforced by [`crate::valid`].

use quote::ToTokens;

use crate::args::ServiceArgs;
use crate::valid::Checked;
use plexus_codegen::model::{DeclaredSignature, MethodDef, Param, SchemaSource, ServiceDef};

pub fn lower(args: ServiceArgs, checked: Checked) -> ServiceDef {
    let Checked {
        contract,
        package,
        version,
        roles,
        methods,
    } = checked;
    let methods = methods
        .into_iter()
        .map(|m| {
            let params: Vec<Param> = m
                .params
                .into_iter()
                .map(|(name, ty)| Param { name, ty })
                .collect();
            let mut method = MethodDef {
                schema_name: m.name.to_string(),
                name: m.name,
                kind: m.kind,
                takes_context: m.context.is_some(),
                params,
                reply_schema: m.reply.to_token_stream().to_string(),
                reply: m.reply,
                fallible_items: m.fallible_items,
                role: m.role,
                idempotent: m.idempotent,
                docs: m.docs,
                attrs: m.attrs,
                request_schema: String::new(),
                declared: Some(DeclaredSignature {
                    context: m.context,
                    params: m.declared_params,
                    output: m.declared_output,
                }),
            };
            method.request_schema = method.request_type().to_token_stream().to_string();
            method
        })
        .collect();
    ServiceDef {
        package,
        name: contract.item.ident.to_string(),
        ident: contract.item.ident.clone(),
        version,
        docs: contract.docs,
        roles,
        methods,
        codec: args
            .codec
            .unwrap_or_else(|| syn::parse_quote!(::plexus::codec::MsgPack)),
        vis: contract.item.vis.clone(),
        attrs: contract.attrs,
        source: SchemaSource::RustTrait,
        span: contract.item.ident.span(),
    }
}
