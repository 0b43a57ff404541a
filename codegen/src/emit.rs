//! The one emitter: a [`ServiceDef`] in, the Rust code of its contract out.
//!
//! For a service `Chat` it generates
//! - the server trait `Chat` users implement (one `fn` per operation,
//!   returning a `Send` future so handlers can run on any worker),
//! - the typed client `ChatClient`,
//! - the handler adapter `ChatHandler<T>`, which turns an implementation
//!   into a `plexus::Router`,
//! - the `DESCRIPTOR` both of them expose,
//! - the actor trait `ChatActor`: the same operations on `&mut self`, for
//!   state owned by a `plexus::node::Actor` (which then implements `Chat`),
//! - `ChatFanout`: the unary, one-way and server-stream operations called on
//!   every linked peer at once (`node.fanout::<ChatClient>(deadline).post(msg)`),
//!   or relayed through the mesh (`node.relay::<ChatClient>(deadline)`),
//! - the private `__ChatCodec<N>` every use of a message type goes through,
//!   so a type the codec cannot carry is one error at the type ([`Carriers`]).
//!
//! Generated code names the runtime only as `::plexus::...` and uses only its
//! public API, and the hidden items made for it (`plexus::codec::Carrier`,
//! `plexus::codegen`). Local variables are created with `Span::mixed_site()` so they
//! can never shadow, or be shadowed by, the user's parameter names.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};

use crate::fingerprint::fingerprint;
use crate::model::{CallKind, MethodDef, SchemaSource, ServiceDef};

/// Generates the server trait, client, handler adapter and descriptor of `service`.
pub fn emit_service(service: &ServiceDef) -> TokenStream {
    let names = Names::new(service);
    let server_trait = emit_trait(service, &names);
    let client = emit_client(service, &names);
    let handler = emit_handler(service, &names);
    let actor = emit_actor(service, &names);
    let fanout = emit_fanout(service, &names);
    let carriers = names.carriers.emit(service);
    quote! {
        #server_trait
        #client
        #handler
        #actor
        #fanout
        #carriers
    }
}

/// Identifiers of the generated items and the hygienic locals they share.
struct Names {
    service: syn::Ident,
    client: syn::Ident,
    handler: syn::Ident,
    actor: syn::Ident,
    fanout: syn::Ident,
    carriers: Carriers,
}

impl Names {
    fn new(service: &ServiceDef) -> Self {
        let ident = &service.ident;
        Names {
            service: ident.clone(),
            client: format_ident!("{}Client", ident, span = service.span),
            handler: format_ident!("{}Handler", ident, span = service.span),
            actor: format_ident!("{}Actor", ident, span = service.span),
            fanout: format_ident!("{}Fanout", ident, span = service.span),
            carriers: Carriers::new(service),
        }
    }
}

/// The codec generated code names for each message type of a service.
///
/// Every use of a message type (client, handler, fanout, streams) goes
/// through `__<Service>Codec<N>`, which implements `Codec<T>` for exactly
/// the N-th message type by delegating to the service's codec. Whether that
/// codec can carry the type is checked in one place, a constant spanned at
/// the type as the contract spells it: a type that is not serializable is
/// one error pointing at it, instead of one per generated use.
struct Carriers {
    ident: syn::Ident,
    /// Each distinct message type (by spelling), with the span to blame.
    types: Vec<(String, syn::Type, Span)>,
}

impl Carriers {
    fn new(service: &ServiceDef) -> Self {
        let mut carriers = Carriers {
            ident: format_ident!("__{}Codec", service.ident, span = Span::call_site()),
            types: Vec::new(),
        };
        for method in &service.methods {
            let request_span = method
                .params
                .first()
                .map_or_else(|| method.name.span(), |p| ty_span(&p.ty));
            carriers.index(&method.request_type(), request_span);
            carriers.index(&method.reply, ty_span(&method.reply));
        }
        carriers
    }

    fn index(&mut self, ty: &syn::Type, span: Span) {
        let key = ty.to_token_stream().to_string();
        if !self.types.iter().any(|(k, _, _)| *k == key) {
            self.types.push((key, ty.clone(), span));
        }
    }

    /// The codec type for `ty`, which [`Carriers::new`] has seen.
    fn of(&self, ty: &syn::Type) -> TokenStream {
        let key = ty.to_token_stream().to_string();
        let ident = &self.ident;
        let index = self
            .types
            .iter()
            .position(|(k, _, _)| *k == key)
            .expect("Carriers::new indexes every request and reply type");
        quote!(#ident<#index>)
    }

    fn request(&self, method: &MethodDef) -> TokenStream {
        self.of(&method.request_type())
    }

    fn reply(&self, method: &MethodDef) -> TokenStream {
        self.of(&method.reply)
    }

    fn emit(&self, service: &ServiceDef) -> TokenStream {
        let ident = &self.ident;
        let codec = &service.codec;
        let impls = self.types.iter().enumerate().map(|(index, (_, ty, span))| {
            // Every token spanned at the type, the codec's path included, so
            // the one error points there.
            let codec = respan(codec.to_token_stream(), *span);
            let carrier =
                quote_spanned!(*span=> ::plexus::codec::Carrier::<#ty>::of::<#codec>());
            quote! {
                impl #ident<#index> {
                    const CARRIER: ::plexus::codec::Carrier<#ty> = #carrier;
                }

                #[diagnostic::do_not_recommend]
                impl ::plexus::codec::Codec<#ty> for #ident<#index> {
                    fn encode(value: &#ty) -> ::core::result::Result<::plexus::Bytes, ::plexus::codec::CodecError> {
                        (Self::CARRIER.encode)(value)
                    }

                    fn encode_into(value: &#ty, buf: &mut ::plexus::codegen::bytes::BytesMut) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
                        (Self::CARRIER.encode_into)(value, buf)
                    }

                    fn encode_spliced(value: &#ty, buf: &mut ::plexus::codegen::bytes::BytesMut, holes: &mut ::std::vec::Vec<(usize, ::plexus::Bytes)>) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
                        (Self::CARRIER.encode_spliced)(value, buf, holes)
                    }

                    fn decode(bytes: ::plexus::Bytes) -> ::core::result::Result<#ty, ::plexus::codec::CodecError> {
                        (Self::CARRIER.decode)(bytes)
                    }
                }
            }
        });
        let doc = format!(
            " The codec of the `{}` service's messages, one `N` per message type (generated; not for use).",
            service.full_name()
        );
        quote! {
            #[doc = #doc]
            #[doc(hidden)]
            #[allow(non_camel_case_types)]
            struct #ident<const N: usize>;

            impl<const N: usize> ::plexus::codec::Format for #ident<N> {
                const NAME: &'static str = <#codec as ::plexus::codec::Format>::NAME;
            }

            #(#impls)*
        }
    }
}

/// `tokens` with every span, nested ones included, set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(group) = &tree {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = proc_macro2::TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// A local variable name that user code cannot see or shadow.
fn local(name: &str) -> syn::Ident {
    syn::Ident::new(name, Span::mixed_site())
}

/// `#[doc]` attributes, one per line, each led by the space `///` would give.
fn doc_attrs(lines: &[String]) -> TokenStream {
    let lines = lines.iter().map(|line| {
        if line.is_empty() {
            String::new()
        } else {
            format!(" {line}")
        }
    });
    quote! { #(#[doc = #lines])* }
}

/// The request parameter type as it appears in the server trait.
fn trait_param_type(method: &MethodDef, ty: &syn::Type) -> TokenStream {
    if method.kind.streams_requests() {
        quote_spanned!(ty_span(ty)=> ::plexus::Streaming<#ty>)
    } else {
        ty.to_token_stream()
    }
}

fn ty_span(ty: &syn::Type) -> Span {
    ty.to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}

/// The `Output` of the server trait method's future.
fn trait_output(method: &MethodDef) -> TokenStream {
    let reply = &method.reply;
    match method.kind {
        CallKind::OneWay => quote!(()),
        CallKind::Unary | CallKind::ClientStream => {
            quote!(::core::result::Result<#reply, ::plexus::Reject>)
        }
        CallKind::ServerStream | CallKind::Bidi => {
            let item = if method.fallible_items {
                quote!(::core::result::Result<#reply, ::plexus::Reject>)
            } else {
                reply.to_token_stream()
            };
            quote!(::core::result::Result<::plexus::BoxStream<#item>, ::plexus::Reject>)
        }
    }
}

fn emit_trait(service: &ServiceDef, names: &Names) -> TokenStream {
    let vis = &service.vis;
    let attrs = &service.attrs;
    let ident = &names.service;
    let client = &names.client;
    let handler = &names.handler;
    let docs = doc_attrs(&service.docs);
    let see_also =
        format!(" Serve an implementation with [`{handler}`]; call it remotely with [`{client}`].");
    let methods = service
        .methods
        .iter()
        .map(|method| method_decl(method, quote!(&self)));
    quote! {
        #docs
        #[doc = ""]
        #[doc = #see_also]
        #(#attrs)*
        #vis trait #ident {
            #(#methods)*
        }
    }
}

/// One trait method declaration, taking `receiver` (`&self` on the server
/// trait, `&mut self` on the actor trait).
fn method_decl(method: &MethodDef, receiver: TokenStream) -> TokenStream {
    let name = &method.name;
    let docs = doc_attrs(&method.docs);
    let attrs = &method.attrs;
    let Signature {
        context,
        params,
        output,
        ..
    } = Signature::of(method);
    quote! {
        #docs
        #(#attrs)*
        fn #name(#receiver, #context #(#params),*)
            -> impl ::core::future::Future<Output = #output> + ::core::marker::Send;
    }
}

/// A server-trait method's parameters and output, as declared (Rust
/// contracts) or spelled canonically (`.proto`).
struct Signature {
    /// `name: CallContext,` if the method takes the context.
    context: Option<TokenStream>,
    /// The context parameter's name, if any.
    context_name: Option<TokenStream>,
    /// `name: Type` per request parameter.
    params: Vec<TokenStream>,
    /// The `Output` of the method's future.
    output: TokenStream,
}

impl Signature {
    fn of(method: &MethodDef) -> Signature {
        match &method.declared {
            Some(declared) => Signature {
                context: declared
                    .context
                    .as_ref()
                    .map(|(ident, ty)| quote!(#ident: #ty,)),
                context_name: declared.context.as_ref().map(|(ident, _)| quote!(#ident,)),
                params: method
                    .params
                    .iter()
                    .zip(&declared.params)
                    .map(|(p, ty)| {
                        let pname = &p.name;
                        quote!(#pname: #ty)
                    })
                    .collect(),
                output: match &declared.output {
                    Some(ty) => ty.to_token_stream(),
                    None => quote!(()),
                },
            },
            None => Signature {
                context: method
                    .takes_context
                    .then(|| quote!(ctx: ::plexus::CallContext,)),
                context_name: method.takes_context.then(|| quote!(ctx,)),
                params: method
                    .params
                    .iter()
                    .map(|p| {
                        let pname = &p.name;
                        let ty = trait_param_type(method, &p.ty);
                        quote!(#pname: #ty)
                    })
                    .collect(),
                output: trait_output(method),
            },
        }
    }
}

/// The actor trait `ChatActor` (the operations on `&mut self`) and
/// `impl Chat for plexus::node::Actor<S>` forwarding each call into the actor.
fn emit_actor(service: &ServiceDef, names: &Names) -> TokenStream {
    let vis = &service.vis;
    let ident = &names.service;
    let handler = &names.handler;
    let actor = &names.actor;
    let summary = format!(
        " [`{ident}`] on state that handles one call at a time: implement it with `&mut self` methods, and serve `{handler}::new(plexus::node::Actor::spawn(state))`."
    );
    let detail = " The state lives on the actor's task; calls run in arrival order, each to completion (awaits included) before the next starts, with no lock in your code. A panic stops the actor: that call and later ones are rejected as failed handlers.";
    let state = local("PlexusActorState");
    let stopped = local("stopped");
    let decls = service
        .methods
        .iter()
        .map(|method| method_decl(method, quote!(&mut self)));
    let forwards = service.methods.iter().map(|method| {
        let name = &method.name;
        let attrs = &method.attrs;
        let Signature {
            context,
            context_name,
            params,
            output,
        } = Signature::of(method);
        let args = method.params.iter().map(|p| &p.name);
        let call = local("call");
        let reply = local("reply");
        let finish = match method.kind {
            // A one-way call has nobody to tell that the actor stopped.
            CallKind::OneWay => quote!(let _ = #call.await;),
            _ => quote! {
                match #call.await {
                    ::core::result::Result::Ok(#reply) => #reply,
                    ::core::result::Result::Err(#stopped) => {
                        ::core::result::Result::Err(::plexus::Reject::from(#stopped))
                    }
                }
            },
        };
        let s = local("s");
        quote! {
            #(#attrs)*
            fn #name(&self, #context #(#params),*)
                -> impl ::core::future::Future<Output = #output> + ::core::marker::Send {
                let #call = ::plexus::node::Actor::call_async(self, move |#s: &mut #state| {
                    ::std::boxed::Box::pin(<#state as #actor>::#name(#s, #context_name #(#args),*))
                        as ::plexus::node::ActorFuture<'_, _>
                });
                async move { #finish }
            }
        }
    });
    quote! {
        #[doc = #summary]
        #[doc = ""]
        #[doc = #detail]
        #vis trait #actor: ::core::marker::Send + 'static {
            #(#decls)*
        }

        impl<#state: #actor> #ident for ::plexus::node::Actor<#state> {
            #(#forwards)*
        }
    }
}

/// `ChatFanout`: each unary, one-way and server-stream operation called on
/// every member of a node's peer set at once, the request encoded once.
fn emit_fanout(service: &ServiceDef, names: &Names) -> TokenStream {
    let vis = &service.vis;
    let client = &names.client;
    let fanout = &names.fanout;
    let summary = format!(
        " Every linked peer of the `{}` service at once: `node.fanout::<{client}>(deadline)`, or every node of the mesh: `node.relay::<{client}>(deadline)`. One method per unary operation (a stream of replies, like `Node::broadcast`), per one-way operation, and per server-stream operation (the peers' streams merged; not relayed).",
        service.full_name()
    );
    let inner = local("inner");
    let body = local("body");
    let request = local("request");
    let methods = service.methods.iter().filter_map(|method| {
        let name = &method.name;
        let op = service.op_id(method);
        let attrs = &method.attrs;
        let reply = &method.reply;
        let request_ty = method.request_type();
        let request_codec = names.carriers.request(method);
        let reply_codec = names.carriers.reply(method);
        let params = method.params.iter().map(|p| {
            let (pname, ty) = (&p.name, &p.ty);
            quote!(#pname: #ty)
        });
        let arg_names: Vec<&syn::Ident> = method.params.iter().map(|p| &p.name).collect();
        let (pack, packed) = match arg_names.as_slice() {
            [] => (quote!(), quote!(&())),
            [one] => (quote!(), quote!(&#one)),
            many => (quote!(let #request = (#(#many,)*);), quote!(&#request)),
        };
        let encode = quote! {
            #pack
            let #body = <#request_codec as ::plexus::codec::Codec<#request_ty>>::encode(#packed);
        };
        match method.kind {
            CallKind::Unary => {
                let docs = doc_attrs(&[format!(
                    "Calls `{op}` on every peer; replies stream back as they arrive."
                )]);
                Some(quote! {
                    #docs
                    #(#attrs)*
                    pub fn #name(&self, #(#params),*) -> ::plexus::node::Broadcast<#reply> {
                        #encode
                        self.#inner.unary::<#reply_codec, #reply>(#op, #body)
                    }
                })
            }
            CallKind::OneWay => {
                let docs = doc_attrs(&[format!(
                    "Sends `{op}` to every peer; says, per peer, whether it went out."
                )]);
                Some(quote! {
                    #docs
                    #(#attrs)*
                    pub async fn #name(&self, #(#params),*)
                        -> ::std::vec::Vec<(::plexus::NodeId, ::core::result::Result<(), ::plexus::CallError>)> {
                        #encode
                        self.#inner.oneway(#op, #body).await
                    }
                })
            }
            CallKind::ServerStream => {
                let docs = doc_attrs(&[format!(
                    "Calls `{op}` on every peer; their streams merge into one, each item tagged with its peer."
                )]);
                Some(quote! {
                    #docs
                    #(#attrs)*
                    pub fn #name(&self, #(#params),*) -> ::plexus::node::FanoutStream<#reply> {
                        #encode
                        self.#inner.server_stream::<#reply_codec, #reply>(#op, #body)
                    }
                })
            }
            _ => None,
        }
    });
    quote! {
        #[doc = #summary]
        #[derive(Clone, Debug)]
        #vis struct #fanout {
            #inner: ::plexus::node::Fanout,
        }

        #[allow(dead_code)]
        impl #fanout {
            /// The peers it reaches: the members when it was made.
            pub fn peers(&self) -> ::std::vec::Vec<::plexus::NodeId> {
                self.#inner.peers()
            }

            #(#methods)*
        }

        impl ::core::convert::From<::plexus::node::Fanout> for #fanout {
            fn from(#inner: ::plexus::node::Fanout) -> Self {
                Self { #inner }
            }
        }
    }
}

/// The `&'static ServiceDescriptor` expression of `service`.
fn emit_descriptor(service: &ServiceDef) -> TokenStream {
    let package = &service.package;
    let name = &service.name;
    let full_name = service.full_name();
    let version = service.version;
    let docs = service.docs.join("\n");
    let roles = &service.roles;
    let codec = &service.codec;
    let fingerprint = fingerprint(service);
    let file_descriptor_set = match &service.source {
        SchemaSource::RustTrait => quote!(::core::option::Option::None),
        SchemaSource::Proto { descriptor_set } => {
            quote!(::core::option::Option::Some(#descriptor_set))
        }
    };
    let methods = service.methods.iter().map(|method| {
        let name = &method.schema_name;
        let op = service.op_id(method);
        let kind = crate::model::runtime_path(method.kind);
        let role = match &method.role {
            Some(role) => quote!(::core::option::Option::Some(#role)),
            None => quote!(::core::option::Option::None),
        };
        let idempotent = method.idempotent;
        let request = crate::fingerprint::squeeze(&method.request_schema);
        let reply = crate::fingerprint::squeeze(&method.reply_schema);
        let docs = method.docs.join("\n");
        let (params, json_schemas) = match &service.source {
            SchemaSource::RustTrait => {
                let params = method.params.iter().map(|p| {
                    let pname = p.name.to_string();
                    let ty = crate::fingerprint::squeeze(&p.ty.to_token_stream().to_string());
                    quote!(::plexus::contract::ParamDescriptor { name: #pname, ty: #ty })
                });
                let request_ty = method.request_type();
                let reply_ty = &method.reply;
                // Autoref selects the schemars-backed probe where the type
                // implements `JsonSchema` (and the feature is on), the
                // schema-less fallback otherwise.
                let probe = |ty: TokenStream| {
                    quote! {{
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<#ty>::NEW).json_schema()
                    }}
                };
                let request_probe = probe(request_ty.to_token_stream());
                let reply_probe = probe(reply_ty.to_token_stream());
                (
                    quote!(&[#(#params),*]),
                    quote! {
                        || ::plexus::contract::JsonSchemas {
                            request: #request_probe,
                            reply: #reply_probe,
                        }
                    },
                )
            }
            SchemaSource::Proto { .. } => {
                (quote!(&[]), quote!(::plexus::contract::JsonSchemas::none))
            }
        };
        quote! {
            ::plexus::contract::MethodDescriptor {
                name: #name,
                op: #op,
                kind: #kind,
                role: #role,
                idempotent: #idempotent,
                request: #request,
                reply: #reply,
                docs: #docs,
                params: #params,
                json_schemas: #json_schemas,
            }
        }
    });
    quote! {
        &::plexus::contract::ServiceDescriptor {
            package: #package,
            name: #name,
            full_name: #full_name,
            version: #version,
            docs: #docs,
            roles: &[#(#roles),*],
            methods: &[#(#methods),*],
            codec: <#codec as ::plexus::codec::Format>::NAME,
            fingerprint: #fingerprint,
            file_descriptor_set: #file_descriptor_set,
        }
    }
}

fn emit_client(service: &ServiceDef, names: &Names) -> TokenStream {
    let vis = &service.vis;
    let client = &names.client;
    let fanout = &names.fanout;
    let descriptor = emit_descriptor(service);
    let docs = doc_attrs(&service.docs);
    let summary = format!(
        " Typed client of the `{}` service: one async method per operation.",
        service.full_name()
    );
    let methods = service
        .methods
        .iter()
        .map(|method| emit_client_method(service, names, method));
    quote! {
        #[doc = #summary]
        #[doc = ""]
        #docs
        #[derive(Clone, Debug)]
        #vis struct #client {
            connection: ::plexus::Connection,
            options: ::plexus::CallOptions,
        }

        // Generated code offers every operation; a program that uses only
        // some of them should not be warned about the rest.
        #[allow(dead_code)]
        impl #client {
            /// The contract this client speaks.
            pub const DESCRIPTOR: &'static ::plexus::contract::ServiceDescriptor = #descriptor;

            /// A client calling over an established connection.
            pub fn new(connection: ::plexus::Connection) -> Self {
                Self { connection, options: ::plexus::CallOptions::new() }
            }

            /// Connects to `url` (e.g. `tcp://127.0.0.1:4000`) and returns a client over the new connection.
            pub async fn connect(url: impl ::plexus::ToUrl) -> ::core::result::Result<Self, ::plexus::ConnectError> {
                ::plexus::Endpoint::builder().build().connect(url).await.map(Self::new)
            }

            /// The same client with `options` (deadline, metadata) applied to every call it makes.
            #[must_use]
            pub fn with_options(mut self, options: ::plexus::CallOptions) -> Self {
                self.options = options;
                self
            }

            /// The connection the calls travel over.
            pub fn connection(&self) -> &::plexus::Connection {
                &self.connection
            }

            #(#methods)*
        }

        impl ::plexus::contract::Contract for #client {
            const DESCRIPTOR: &'static ::plexus::contract::ServiceDescriptor = #client::DESCRIPTOR;
        }

        impl ::plexus::node::Client for #client {
            fn from_connection(connection: ::plexus::Connection) -> Self {
                Self::new(connection)
            }

            fn with_call_options(self, options: ::plexus::CallOptions) -> Self {
                self.with_options(options)
            }

            type Fanout = #fanout;
        }
    }
}

fn emit_client_method(service: &ServiceDef, names: &Names, method: &MethodDef) -> TokenStream {
    let name = &method.name;
    let op = service.op_id(method);
    let request_codec = names.carriers.request(method);
    let reply_codec = names.carriers.reply(method);
    let attrs = &method.attrs;
    let mut docs = method.docs.clone();
    if !docs.is_empty() {
        docs.push(String::new());
    }
    docs.push(format!("Calls `{op}` ({}).", method.kind.as_str()));
    let docs = doc_attrs(&docs);
    let reply = &method.reply;
    let request_ty = method.request_type();
    let body = local("body");
    let request = local("request");
    let peer = quote!(&self.connection);

    let params: Vec<TokenStream> = if method.kind.streams_requests() {
        Vec::new()
    } else {
        method
            .params
            .iter()
            .map(|p| {
                let (pname, ty) = (&p.name, &p.ty);
                quote!(#pname: #ty)
            })
            .collect()
    };
    // A single argument is encoded as it is; several travel as a tuple.
    let (pack, packed) = {
        let names: Vec<&syn::Ident> = method.params.iter().map(|p| &p.name).collect();
        match names.as_slice() {
            [] => (quote!(), quote!(&())),
            [one] => (quote!(), quote!(&#one)),
            many => (quote!(let #request = (#(#many,)*);), quote!(&#request)),
        }
    };
    let encode = quote! {
        #pack
        let #body = ::plexus::codec::encode_request::<#request_codec, #request_ty>(#op, #peer, #packed)?;
    };
    // An idempotent operation may be retried by a reconnecting connection
    // when its link drops mid-call; the flag travels in the call's options.
    let options = if method.idempotent {
        quote!(::plexus::CallOptions::idempotent(
            ::core::clone::Clone::clone(&self.options),
            true
        ))
    } else {
        quote!(::core::clone::Clone::clone(&self.options))
    };

    let (output, call) = match method.kind {
        CallKind::Unary => (
            quote!(#reply),
            quote! {
                #encode
                let #body = self.connection.call(#op, #body, #options).await?;
                ::plexus::codec::decode_reply::<#reply_codec, #reply>(#op, #peer, #body)
            },
        ),
        CallKind::OneWay => (
            quote!(()),
            quote! {
                #encode
                self.connection.oneway(#op, #body, #options).await
            },
        ),
        CallKind::ServerStream => (
            quote!(::plexus::Streaming<#reply>),
            quote! {
                #encode
                let inbound = self.connection.server_stream(#op, #body, #options).await?;
                ::core::result::Result::Ok(::plexus::Streaming::new::<#reply_codec>(inbound, #op, ::core::clone::Clone::clone(self.connection.peer().label())))
            },
        ),
        CallKind::ClientStream => (
            quote!((::plexus::StreamSender<#request_ty>, ::plexus::contract::ReplyFuture<#reply>)),
            quote! {
                let (outbound, reply) = self.connection.client_stream(#op, #options).await?;
                ::core::result::Result::Ok((
                    ::plexus::StreamSender::new::<#request_codec>(outbound, #op, ::core::clone::Clone::clone(self.connection.peer().label())),
                    ::plexus::contract::ReplyFuture::new::<#reply_codec>(reply, #op, ::core::clone::Clone::clone(self.connection.peer().label())),
                ))
            },
        ),
        CallKind::Bidi => (
            quote!((::plexus::StreamSender<#request_ty>, ::plexus::Streaming<#reply>)),
            quote! {
                let (outbound, inbound) = self.connection.bidi(#op, #options).await?;
                ::core::result::Result::Ok((
                    ::plexus::StreamSender::new::<#request_codec>(outbound, #op, ::core::clone::Clone::clone(self.connection.peer().label())),
                    ::plexus::Streaming::new::<#reply_codec>(inbound, #op, ::core::clone::Clone::clone(self.connection.peer().label())),
                ))
            },
        ),
    };
    quote! {
        #docs
        #(#attrs)*
        pub async fn #name(&self, #(#params),*) -> ::core::result::Result<#output, ::plexus::CallError> {
            #call
        }
    }
}

fn emit_handler(service: &ServiceDef, names: &Names) -> TokenStream {
    let vis = &service.vis;
    let ident = &names.service;
    let client = &names.client;
    let handler = &names.handler;
    let summary = format!(
        " Serves an implementation of [`{ident}`] as the `{}` service: decodes each request, calls the trait method, encodes the reply.",
        service.full_name()
    );
    let shared_service = local("service");
    let routes = service
        .methods
        .iter()
        .map(|method| emit_route(service, names, method, &shared_service));
    quote! {
        #[doc = #summary]
        #[doc = ""]
        #[doc = " Pass it to `Server::serve`, or merge several services with `Router::add`."]
        #vis struct #handler<T> {
            service: ::std::sync::Arc<T>,
        }

        #[allow(dead_code)]
        impl<T> #handler<T> {
            /// The contract this handler serves.
            pub const DESCRIPTOR: &'static ::plexus::contract::ServiceDescriptor = #client::DESCRIPTOR;

            /// Serves `service`.
            pub fn new(service: T) -> Self {
                Self::from_arc(::std::sync::Arc::new(service))
            }

            /// Serves a shared `service` (e.g. one also used by other handlers).
            pub fn from_arc(service: ::std::sync::Arc<T>) -> Self {
                Self { service }
            }
        }

        impl<T> ::core::clone::Clone for #handler<T> {
            fn clone(&self) -> Self {
                Self { service: ::std::sync::Arc::clone(&self.service) }
            }
        }

        impl<T> ::core::fmt::Debug for #handler<T> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#handler)).finish_non_exhaustive()
            }
        }

        impl<T> ::plexus::contract::Contract for #handler<T> {
            const DESCRIPTOR: &'static ::plexus::contract::ServiceDescriptor = #client::DESCRIPTOR;
        }

        impl<T> ::plexus::server::IntoRouter for #handler<T>
        where
            T: #ident + ::core::marker::Send + ::core::marker::Sync + 'static,
        {
            fn into_router(self) -> ::plexus::Router {
                let #shared_service = self.service;
                ::plexus::Router::new()
                    .with_descriptor(#client::DESCRIPTOR)
                    #(#routes)*
            }
        }
    }
}

/// One `.<kind>(op, handler)` registration on the router, the handler
/// holding its own reference to the shared implementation `service`.
fn emit_route(
    service: &ServiceDef,
    names: &Names,
    method: &MethodDef,
    shared_service: &syn::Ident,
) -> TokenStream {
    let name = &method.name;
    let trait_ident = &names.service;
    let op = service.op_id(method);
    let request_codec = names.carriers.request(method);
    let reply_codec = names.carriers.reply(method);
    let reply = &method.reply;
    let request_ty = method.request_type();
    let shared = local("shared");
    let svc = local("svc");
    let ctx = local("ctx");
    let body = local("body");
    let inbound = local("inbound");
    let outbound = local("outbound");
    let request = local("request");

    // The arguments the trait method receives, in order.
    let context_arg = method.takes_context.then(|| quote!(#ctx,));
    let unpack_names: Vec<syn::Ident> = (0..method.params.len())
        .map(|i| local(&format!("arg{i}")))
        .collect();
    let unpack = match unpack_names.as_slice() {
        [] => quote!(),
        [one] => quote!(let #one = #request;),
        many => quote!(let (#(#many,)*) = #request;),
    };
    let decode = match unpack_names.as_slice() {
        // No arguments: the (empty) request is still decoded, to refuse garbage.
        [] => quote! {
            ::plexus::codec::decode_request::<#request_codec, #request_ty>(#body)?;
        },
        [one] => quote! {
            let #one = ::plexus::codec::decode_request::<#request_codec, #request_ty>(#body)?;
        },
        _ => quote! {
            let #request = ::plexus::codec::decode_request::<#request_codec, #request_ty>(#body)?;
            #unpack
        },
    };
    let invoke = quote!(<T as #trait_ident>::#name(&*#svc, #context_arg #(#unpack_names),*).await);
    let ctx_param = if method.takes_context || method.kind.streams_requests() {
        quote!(#ctx)
    } else {
        quote!(_)
    };
    let forward = if method.fallible_items {
        quote!(::plexus::contract::forward_fallible::<#reply_codec, #reply>)
    } else {
        quote!(::plexus::contract::forward::<#reply_codec, #reply>)
    };

    let (register, params, body_code) = match method.kind {
        CallKind::Unary => (
            quote!(unary),
            quote!(#ctx_param, #body),
            quote! {
                #decode
                ::plexus::codec::encode_reply::<#reply_codec, #reply>(&#invoke?)
            },
        ),
        CallKind::OneWay => (
            quote!(oneway),
            quote!(#ctx_param, #body),
            quote! {
                match ::plexus::codec::decode_request::<#request_codec, #request_ty>(#body) {
                    ::core::result::Result::Ok(#request) => {
                        #unpack
                        #invoke
                    }
                    ::core::result::Result::Err(reject) => ::plexus::contract::undecodable_oneway(#op, &reject),
                }
            },
        ),
        CallKind::ServerStream => (
            quote!(server_stream),
            quote!(#ctx_param, #body, #outbound),
            quote! {
                #decode
                #forward(#invoke?, #outbound).await
            },
        ),
        CallKind::ClientStream => (
            quote!(client_stream),
            quote!(#ctx_param, #inbound),
            quote! {
                let #request = ::plexus::Streaming::<#request_ty>::new::<#request_codec>(
                    #inbound,
                    #ctx.op(),
                    ::core::clone::Clone::clone(#ctx.peer().label()),
                );
                #unpack
                ::plexus::codec::encode_reply::<#reply_codec, #reply>(&#invoke?)
            },
        ),
        CallKind::Bidi => (
            quote!(bidi),
            quote!(#ctx_param, #inbound, #outbound),
            quote! {
                let #request = ::plexus::Streaming::<#request_ty>::new::<#request_codec>(
                    #inbound,
                    #ctx.op(),
                    ::core::clone::Clone::clone(#ctx.peer().label()),
                );
                #unpack
                #forward(#invoke?, #outbound).await
            },
        ),
    };
    quote! {
        .#register(#op, {
            let #shared = ::std::sync::Arc::clone(&#shared_service);
            move |#params| {
                let #svc = ::std::sync::Arc::clone(&#shared);
                async move { #body_code }
            }
        })
    }
}
