//! The arguments of `#[plexus::service(...)]`.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::spanned::Spanned;

/// `#[plexus::service(package = "chat", version = 1, roles = ["member", "host"], codec = plexus::codec::Json)]`,
/// every key optional.
pub struct ServiceArgs {
    /// Dotted package prefixing every op id.
    pub package: Option<syn::LitStr>,
    /// Contract version, 1 when absent.
    pub version: Option<syn::LitInt>,
    /// Declared roles, in order.
    pub roles: Vec<syn::LitStr>,
    /// The codec type; MessagePack when absent.
    pub codec: Option<syn::Type>,
}

impl ServiceArgs {
    pub fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let mut args = ServiceArgs {
            package: None,
            version: None,
            roles: Vec::new(),
            codec: None,
        };
        let mut roles_seen = false;
        let parser =
            syn::meta::parser(|meta| {
                let duplicate = || meta.error("this key is given twice; keep one");
                if meta.path.is_ident("package") {
                    if args.package.is_some() {
                        return Err(duplicate());
                    }
                    args.package = Some(meta.value()?.parse()?);
                } else if meta.path.is_ident("version") {
                    if args.version.is_some() {
                        return Err(duplicate());
                    }
                    args.version = Some(meta.value()?.parse()?);
                } else if meta.path.is_ident("roles") {
                    if roles_seen {
                        return Err(duplicate());
                    }
                    roles_seen = true;
                    let list: syn::ExprArray = meta.value()?.parse()?;
                    for elem in list.elems {
                        match elem {
                            syn::Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Str(s),
                                ..
                            }) => args.roles.push(s),
                            other => return Err(syn::Error::new(
                                other.span(),
                                "roles are string literals, e.g. `roles = [\"member\", \"host\"]`",
                            )),
                        }
                    }
                } else if meta.path.is_ident("codec") {
                    if args.codec.is_some() {
                        return Err(duplicate());
                    }
                    args.codec = Some(meta.value()?.parse()?);
                } else {
                    return Err(meta.error(
                        "unknown service option; expected `package`, `version`, `roles` or `codec`",
                    ));
                }
                Ok(())
            });
        parser.parse2(tokens)?;
        Ok(args)
    }
}
