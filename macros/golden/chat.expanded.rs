// @generated from chat.contract.rs by macros/src/golden.rs: what the macro
// and the emitter generate for it. Do not edit; rewrite it with
// `PLEXUS_BLESS=1 cargo test -p plexus-macros --lib golden`.

/// A chat room.
///
/// Serve an implementation with [`ChatHandler`]; call it remotely with [`ChatClient`].
pub trait Chat {
    /// Acked call: `Ok` carries the reply, `Err` rejects with code and reason.
    fn post(
        &self,
        msg: Message,
    ) -> impl ::core::future::Future<
        Output = Result<Receipt, Reject>,
    > + ::core::marker::Send;
    /// Fire-and-forget: no ack, no return type.
    fn typing(
        &self,
        user: String,
    ) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send;
    /// Server stream with fallible items, safe to retry.
    fn history(
        &self,
        since: u64,
    ) -> impl ::core::future::Future<
        Output = Result<BoxStream<Result<Message, Reject>>, Reject>,
    > + ::core::marker::Send;
    /// Client stream, served by hosts only.
    fn import(
        &self,
        msgs: Streaming<Message>,
    ) -> impl ::core::future::Future<
        Output = Result<u32, Reject>,
    > + ::core::marker::Send;
    /// Bidi stream.
    fn relay(
        &self,
        msgs: Streaming<Message>,
    ) -> impl ::core::future::Future<
        Output = Result<BoxStream<Message>, Reject>,
    > + ::core::marker::Send;
    /// Several arguments travel as one tuple; the context is not one of them.
    #[deprecated(note = "use post")]
    fn add(
        &self,
        ctx: plexus::CallContext,
        a: i64,
        b: i64,
    ) -> impl ::core::future::Future<
        Output = Result<i64, Reject>,
    > + ::core::marker::Send;
}
/// Typed client of the `chat.Chat` service: one async method per operation.
///
/// A chat room.
#[derive(Clone, Debug)]
pub struct ChatClient {
    connection: ::plexus::Connection,
    options: ::plexus::CallOptions,
}
#[allow(dead_code)]
impl ChatClient {
    /// The contract this client speaks.
    pub const DESCRIPTOR: &'static ::plexus::contract::ServiceDescriptor = &::plexus::contract::ServiceDescriptor {
        package: "chat",
        name: "Chat",
        full_name: "chat.Chat",
        version: 2u32,
        docs: "A chat room.",
        roles: &["member", "host"],
        methods: &[
            ::plexus::contract::MethodDescriptor {
                name: "post",
                op: "chat.Chat/post",
                kind: ::plexus::contract::CallKind::Unary,
                role: ::core::option::Option::None,
                idempotent: false,
                request: "Message",
                reply: "Receipt",
                docs: "Acked call: `Ok` carries the reply, `Err` rejects with code and reason.",
                params: &[
                    ::plexus::contract::ParamDescriptor {
                        name: "msg",
                        ty: "Message",
                    },
                ],
                json_schemas: || ::plexus::contract::JsonSchemas {
                    request: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<Message>::NEW)
                            .json_schema()
                    },
                    reply: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<Receipt>::NEW)
                            .json_schema()
                    },
                },
            },
            ::plexus::contract::MethodDescriptor {
                name: "typing",
                op: "chat.Chat/typing",
                kind: ::plexus::contract::CallKind::OneWay,
                role: ::core::option::Option::None,
                idempotent: false,
                request: "String",
                reply: "()",
                docs: "Fire-and-forget: no ack, no return type.",
                params: &[
                    ::plexus::contract::ParamDescriptor {
                        name: "user",
                        ty: "String",
                    },
                ],
                json_schemas: || ::plexus::contract::JsonSchemas {
                    request: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<String>::NEW)
                            .json_schema()
                    },
                    reply: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<()>::NEW).json_schema()
                    },
                },
            },
            ::plexus::contract::MethodDescriptor {
                name: "history",
                op: "chat.Chat/history",
                kind: ::plexus::contract::CallKind::ServerStream,
                role: ::core::option::Option::None,
                idempotent: true,
                request: "u64",
                reply: "Message",
                docs: "Server stream with fallible items, safe to retry.",
                params: &[
                    ::plexus::contract::ParamDescriptor {
                        name: "since",
                        ty: "u64",
                    },
                ],
                json_schemas: || ::plexus::contract::JsonSchemas {
                    request: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<u64>::NEW).json_schema()
                    },
                    reply: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<Message>::NEW)
                            .json_schema()
                    },
                },
            },
            ::plexus::contract::MethodDescriptor {
                name: "import",
                op: "chat.Chat/import",
                kind: ::plexus::contract::CallKind::ClientStream,
                role: ::core::option::Option::Some("host"),
                idempotent: false,
                request: "Message",
                reply: "u32",
                docs: "Client stream, served by hosts only.",
                params: &[
                    ::plexus::contract::ParamDescriptor {
                        name: "msgs",
                        ty: "Message",
                    },
                ],
                json_schemas: || ::plexus::contract::JsonSchemas {
                    request: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<Message>::NEW)
                            .json_schema()
                    },
                    reply: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<u32>::NEW).json_schema()
                    },
                },
            },
            ::plexus::contract::MethodDescriptor {
                name: "relay",
                op: "chat.Chat/relay",
                kind: ::plexus::contract::CallKind::Bidi,
                role: ::core::option::Option::None,
                idempotent: false,
                request: "Message",
                reply: "Message",
                docs: "Bidi stream.",
                params: &[
                    ::plexus::contract::ParamDescriptor {
                        name: "msgs",
                        ty: "Message",
                    },
                ],
                json_schemas: || ::plexus::contract::JsonSchemas {
                    request: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<Message>::NEW)
                            .json_schema()
                    },
                    reply: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<Message>::NEW)
                            .json_schema()
                    },
                },
            },
            ::plexus::contract::MethodDescriptor {
                name: "add",
                op: "chat.Chat/add",
                kind: ::plexus::contract::CallKind::Unary,
                role: ::core::option::Option::None,
                idempotent: false,
                request: "(i64,i64,)",
                reply: "i64",
                docs: "Several arguments travel as one tuple; the context is not one of them.",
                params: &[
                    ::plexus::contract::ParamDescriptor {
                        name: "a",
                        ty: "i64",
                    },
                    ::plexus::contract::ParamDescriptor {
                        name: "b",
                        ty: "i64",
                    },
                ],
                json_schemas: || ::plexus::contract::JsonSchemas {
                    request: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<(i64, i64)>::NEW)
                            .json_schema()
                    },
                    reply: {
                        #[allow(unused_imports)]
                        use ::plexus::reflection::probe::{Provided as _, Absent as _};
                        (&::plexus::reflection::probe::Probe::<i64>::NEW).json_schema()
                    },
                },
            },
        ],
        codec: <::plexus::codec::MsgPack as ::plexus::codec::Format>::NAME,
        fingerprint: 3409070837877174562u64,
        file_descriptor_set: ::core::option::Option::None,
    };
    /// A client calling over an established connection.
    pub fn new(connection: ::plexus::Connection) -> Self {
        Self {
            connection,
            options: ::plexus::CallOptions::new(),
        }
    }
    /// Connects to `url` (e.g. `tcp://127.0.0.1:4000`) and returns a client over the new connection.
    pub async fn connect(
        url: impl ::plexus::ToUrl,
    ) -> ::core::result::Result<Self, ::plexus::ConnectError> {
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
    /// Acked call: `Ok` carries the reply, `Err` rejects with code and reason.
    ///
    /// Calls `chat.Chat/post` (unary).
    pub async fn post(
        &self,
        msg: Message,
    ) -> ::core::result::Result<Receipt, ::plexus::CallError> {
        let body = ::plexus::codec::encode_request::<
            __ChatCodec<0usize>,
            Message,
        >("chat.Chat/post", &self.connection, &msg)?;
        let body = self
            .connection
            .call("chat.Chat/post", body, ::core::clone::Clone::clone(&self.options))
            .await?;
        ::plexus::codec::decode_reply::<
            __ChatCodec<1usize>,
            Receipt,
        >("chat.Chat/post", &self.connection, body)
    }
    /// Fire-and-forget: no ack, no return type.
    ///
    /// Calls `chat.Chat/typing` (oneway).
    pub async fn typing(
        &self,
        user: String,
    ) -> ::core::result::Result<(), ::plexus::CallError> {
        let body = ::plexus::codec::encode_request::<
            __ChatCodec<2usize>,
            String,
        >("chat.Chat/typing", &self.connection, &user)?;
        self.connection
            .oneway("chat.Chat/typing", body, ::core::clone::Clone::clone(&self.options))
            .await
    }
    /// Server stream with fallible items, safe to retry.
    ///
    /// Calls `chat.Chat/history` (server_stream).
    pub async fn history(
        &self,
        since: u64,
    ) -> ::core::result::Result<::plexus::Streaming<Message>, ::plexus::CallError> {
        let body = ::plexus::codec::encode_request::<
            __ChatCodec<4usize>,
            u64,
        >("chat.Chat/history", &self.connection, &since)?;
        let inbound = self
            .connection
            .server_stream(
                "chat.Chat/history",
                body,
                ::plexus::CallOptions::idempotent(
                    ::core::clone::Clone::clone(&self.options),
                    true,
                ),
            )
            .await?;
        ::core::result::Result::Ok(
            ::plexus::Streaming::new::<
                __ChatCodec<0usize>,
            >(
                inbound,
                "chat.Chat/history",
                ::core::clone::Clone::clone(self.connection.peer().label()),
            ),
        )
    }
    /// Client stream, served by hosts only.
    ///
    /// Calls `chat.Chat/import` (client_stream).
    pub async fn import(
        &self,
    ) -> ::core::result::Result<
        (::plexus::StreamSender<Message>, ::plexus::contract::ReplyFuture<u32>),
        ::plexus::CallError,
    > {
        let (outbound, reply) = self
            .connection
            .client_stream(
                "chat.Chat/import",
                ::core::clone::Clone::clone(&self.options),
            )
            .await?;
        ::core::result::Result::Ok((
            ::plexus::StreamSender::new::<
                __ChatCodec<0usize>,
            >(
                outbound,
                "chat.Chat/import",
                ::core::clone::Clone::clone(self.connection.peer().label()),
            ),
            ::plexus::contract::ReplyFuture::new::<
                __ChatCodec<5usize>,
            >(
                reply,
                "chat.Chat/import",
                ::core::clone::Clone::clone(self.connection.peer().label()),
            ),
        ))
    }
    /// Bidi stream.
    ///
    /// Calls `chat.Chat/relay` (bidi).
    pub async fn relay(
        &self,
    ) -> ::core::result::Result<
        (::plexus::StreamSender<Message>, ::plexus::Streaming<Message>),
        ::plexus::CallError,
    > {
        let (outbound, inbound) = self
            .connection
            .bidi("chat.Chat/relay", ::core::clone::Clone::clone(&self.options))
            .await?;
        ::core::result::Result::Ok((
            ::plexus::StreamSender::new::<
                __ChatCodec<0usize>,
            >(
                outbound,
                "chat.Chat/relay",
                ::core::clone::Clone::clone(self.connection.peer().label()),
            ),
            ::plexus::Streaming::new::<
                __ChatCodec<0usize>,
            >(
                inbound,
                "chat.Chat/relay",
                ::core::clone::Clone::clone(self.connection.peer().label()),
            ),
        ))
    }
    /// Several arguments travel as one tuple; the context is not one of them.
    ///
    /// Calls `chat.Chat/add` (unary).
    #[deprecated(note = "use post")]
    pub async fn add(
        &self,
        a: i64,
        b: i64,
    ) -> ::core::result::Result<i64, ::plexus::CallError> {
        let request = (a, b);
        let body = ::plexus::codec::encode_request::<
            __ChatCodec<6usize>,
            (i64, i64),
        >("chat.Chat/add", &self.connection, &request)?;
        let body = self
            .connection
            .call("chat.Chat/add", body, ::core::clone::Clone::clone(&self.options))
            .await?;
        ::plexus::codec::decode_reply::<
            __ChatCodec<7usize>,
            i64,
        >("chat.Chat/add", &self.connection, body)
    }
}
impl ::plexus::contract::Contract for ChatClient {
    const DESCRIPTOR: &'static ::plexus::contract::ServiceDescriptor = ChatClient::DESCRIPTOR;
}
impl ::plexus::node::Client for ChatClient {
    fn from_connection(connection: ::plexus::Connection) -> Self {
        Self::new(connection)
    }
    fn with_call_options(self, options: ::plexus::CallOptions) -> Self {
        self.with_options(options)
    }
    type Fanout = ChatFanout;
}
/// Serves an implementation of [`Chat`] as the `chat.Chat` service: decodes each request, calls the trait method, encodes the reply.
///
/// Pass it to `Server::serve`, or merge several services with `Router::add`.
pub struct ChatHandler<T> {
    service: ::std::sync::Arc<T>,
}
#[allow(dead_code)]
impl<T> ChatHandler<T> {
    /// The contract this handler serves.
    pub const DESCRIPTOR: &'static ::plexus::contract::ServiceDescriptor = ChatClient::DESCRIPTOR;
    /// Serves `service`.
    pub fn new(service: T) -> Self {
        Self::from_arc(::std::sync::Arc::new(service))
    }
    /// Serves a shared `service` (e.g. one also used by other handlers).
    pub fn from_arc(service: ::std::sync::Arc<T>) -> Self {
        Self { service }
    }
}
impl<T> ::core::clone::Clone for ChatHandler<T> {
    fn clone(&self) -> Self {
        Self {
            service: ::std::sync::Arc::clone(&self.service),
        }
    }
}
impl<T> ::core::fmt::Debug for ChatHandler<T> {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        f.debug_struct(::core::stringify!(ChatHandler)).finish_non_exhaustive()
    }
}
impl<T> ::plexus::contract::Contract for ChatHandler<T> {
    const DESCRIPTOR: &'static ::plexus::contract::ServiceDescriptor = ChatClient::DESCRIPTOR;
}
impl<T> ::plexus::server::IntoRouter for ChatHandler<T>
where
    T: Chat + ::core::marker::Send + ::core::marker::Sync + 'static,
{
    fn into_router(self) -> ::plexus::Router {
        let service = self.service;
        ::plexus::Router::new()
            .with_descriptor(ChatClient::DESCRIPTOR)
            .unary(
                "chat.Chat/post",
                {
                    let shared = ::std::sync::Arc::clone(&service);
                    move |_, body| {
                        let svc = ::std::sync::Arc::clone(&shared);
                        async move {
                            let arg0 = ::plexus::codec::decode_request::<
                                __ChatCodec<0usize>,
                                Message,
                            >(body)?;
                            ::plexus::codec::encode_reply::<
                                __ChatCodec<1usize>,
                                Receipt,
                            >(&<T as Chat>::post(&*svc, arg0).await?)
                        }
                    }
                },
            )
            .oneway(
                "chat.Chat/typing",
                {
                    let shared = ::std::sync::Arc::clone(&service);
                    move |_, body| {
                        let svc = ::std::sync::Arc::clone(&shared);
                        async move {
                            match ::plexus::codec::decode_request::<
                                __ChatCodec<2usize>,
                                String,
                            >(body) {
                                ::core::result::Result::Ok(request) => {
                                    let arg0 = request;
                                    <T as Chat>::typing(&*svc, arg0).await
                                }
                                ::core::result::Result::Err(reject) => {
                                    ::plexus::contract::undecodable_oneway(
                                        "chat.Chat/typing",
                                        &reject,
                                    )
                                }
                            }
                        }
                    }
                },
            )
            .server_stream(
                "chat.Chat/history",
                {
                    let shared = ::std::sync::Arc::clone(&service);
                    move |_, body, outbound| {
                        let svc = ::std::sync::Arc::clone(&shared);
                        async move {
                            let arg0 = ::plexus::codec::decode_request::<
                                __ChatCodec<4usize>,
                                u64,
                            >(body)?;
                            ::plexus::contract::forward_fallible::<
                                __ChatCodec<0usize>,
                                Message,
                            >(<T as Chat>::history(&*svc, arg0).await?, outbound)
                                .await
                        }
                    }
                },
            )
            .client_stream(
                "chat.Chat/import",
                {
                    let shared = ::std::sync::Arc::clone(&service);
                    move |ctx, inbound| {
                        let svc = ::std::sync::Arc::clone(&shared);
                        async move {
                            let request = ::plexus::Streaming::<
                                Message,
                            >::new::<
                                __ChatCodec<0usize>,
                            >(
                                inbound,
                                ctx.op(),
                                ::core::clone::Clone::clone(ctx.peer().label()),
                            );
                            let arg0 = request;
                            ::plexus::codec::encode_reply::<
                                __ChatCodec<5usize>,
                                u32,
                            >(&<T as Chat>::import(&*svc, arg0).await?)
                        }
                    }
                },
            )
            .bidi(
                "chat.Chat/relay",
                {
                    let shared = ::std::sync::Arc::clone(&service);
                    move |ctx, inbound, outbound| {
                        let svc = ::std::sync::Arc::clone(&shared);
                        async move {
                            let request = ::plexus::Streaming::<
                                Message,
                            >::new::<
                                __ChatCodec<0usize>,
                            >(
                                inbound,
                                ctx.op(),
                                ::core::clone::Clone::clone(ctx.peer().label()),
                            );
                            let arg0 = request;
                            ::plexus::contract::forward::<
                                __ChatCodec<0usize>,
                                Message,
                            >(<T as Chat>::relay(&*svc, arg0).await?, outbound)
                                .await
                        }
                    }
                },
            )
            .unary(
                "chat.Chat/add",
                {
                    let shared = ::std::sync::Arc::clone(&service);
                    move |ctx, body| {
                        let svc = ::std::sync::Arc::clone(&shared);
                        async move {
                            let request = ::plexus::codec::decode_request::<
                                __ChatCodec<6usize>,
                                (i64, i64),
                            >(body)?;
                            let (arg0, arg1) = request;
                            ::plexus::codec::encode_reply::<
                                __ChatCodec<7usize>,
                                i64,
                            >(&<T as Chat>::add(&*svc, ctx, arg0, arg1).await?)
                        }
                    }
                },
            )
    }
}
/// [`Chat`] on state that handles one call at a time: implement it with `&mut self` methods, and serve `ChatHandler::new(plexus::node::Actor::spawn(state))`.
///
/// The state lives on the actor's task; calls run in arrival order, each to completion (awaits included) before the next starts, with no lock in your code. A panic stops the actor: that call and later ones are rejected as failed handlers.
pub trait ChatActor: ::core::marker::Send + 'static {
    /// Acked call: `Ok` carries the reply, `Err` rejects with code and reason.
    fn post(
        &mut self,
        msg: Message,
    ) -> impl ::core::future::Future<
        Output = Result<Receipt, Reject>,
    > + ::core::marker::Send;
    /// Fire-and-forget: no ack, no return type.
    fn typing(
        &mut self,
        user: String,
    ) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send;
    /// Server stream with fallible items, safe to retry.
    fn history(
        &mut self,
        since: u64,
    ) -> impl ::core::future::Future<
        Output = Result<BoxStream<Result<Message, Reject>>, Reject>,
    > + ::core::marker::Send;
    /// Client stream, served by hosts only.
    fn import(
        &mut self,
        msgs: Streaming<Message>,
    ) -> impl ::core::future::Future<
        Output = Result<u32, Reject>,
    > + ::core::marker::Send;
    /// Bidi stream.
    fn relay(
        &mut self,
        msgs: Streaming<Message>,
    ) -> impl ::core::future::Future<
        Output = Result<BoxStream<Message>, Reject>,
    > + ::core::marker::Send;
    /// Several arguments travel as one tuple; the context is not one of them.
    #[deprecated(note = "use post")]
    fn add(
        &mut self,
        ctx: plexus::CallContext,
        a: i64,
        b: i64,
    ) -> impl ::core::future::Future<
        Output = Result<i64, Reject>,
    > + ::core::marker::Send;
}
impl<PlexusActorState: ChatActor> Chat for ::plexus::node::Actor<PlexusActorState> {
    fn post(
        &self,
        msg: Message,
    ) -> impl ::core::future::Future<
        Output = Result<Receipt, Reject>,
    > + ::core::marker::Send {
        let call = ::plexus::node::Actor::call_async(
            self,
            move |s: &mut PlexusActorState| {
                ::std::boxed::Box::pin(<PlexusActorState as ChatActor>::post(s, msg))
                    as ::plexus::node::ActorFuture<'_, _>
            },
        );
        async move {
            match call.await {
                ::core::result::Result::Ok(reply) => reply,
                ::core::result::Result::Err(stopped) => {
                    ::core::result::Result::Err(::plexus::Reject::from(stopped))
                }
            }
        }
    }
    fn typing(
        &self,
        user: String,
    ) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send {
        let call = ::plexus::node::Actor::call_async(
            self,
            move |s: &mut PlexusActorState| {
                ::std::boxed::Box::pin(<PlexusActorState as ChatActor>::typing(s, user))
                    as ::plexus::node::ActorFuture<'_, _>
            },
        );
        async move {
            let _ = call.await;
        }
    }
    fn history(
        &self,
        since: u64,
    ) -> impl ::core::future::Future<
        Output = Result<BoxStream<Result<Message, Reject>>, Reject>,
    > + ::core::marker::Send {
        let call = ::plexus::node::Actor::call_async(
            self,
            move |s: &mut PlexusActorState| {
                ::std::boxed::Box::pin(
                    <PlexusActorState as ChatActor>::history(s, since),
                ) as ::plexus::node::ActorFuture<'_, _>
            },
        );
        async move {
            match call.await {
                ::core::result::Result::Ok(reply) => reply,
                ::core::result::Result::Err(stopped) => {
                    ::core::result::Result::Err(::plexus::Reject::from(stopped))
                }
            }
        }
    }
    fn import(
        &self,
        msgs: Streaming<Message>,
    ) -> impl ::core::future::Future<
        Output = Result<u32, Reject>,
    > + ::core::marker::Send {
        let call = ::plexus::node::Actor::call_async(
            self,
            move |s: &mut PlexusActorState| {
                ::std::boxed::Box::pin(<PlexusActorState as ChatActor>::import(s, msgs))
                    as ::plexus::node::ActorFuture<'_, _>
            },
        );
        async move {
            match call.await {
                ::core::result::Result::Ok(reply) => reply,
                ::core::result::Result::Err(stopped) => {
                    ::core::result::Result::Err(::plexus::Reject::from(stopped))
                }
            }
        }
    }
    fn relay(
        &self,
        msgs: Streaming<Message>,
    ) -> impl ::core::future::Future<
        Output = Result<BoxStream<Message>, Reject>,
    > + ::core::marker::Send {
        let call = ::plexus::node::Actor::call_async(
            self,
            move |s: &mut PlexusActorState| {
                ::std::boxed::Box::pin(<PlexusActorState as ChatActor>::relay(s, msgs))
                    as ::plexus::node::ActorFuture<'_, _>
            },
        );
        async move {
            match call.await {
                ::core::result::Result::Ok(reply) => reply,
                ::core::result::Result::Err(stopped) => {
                    ::core::result::Result::Err(::plexus::Reject::from(stopped))
                }
            }
        }
    }
    #[deprecated(note = "use post")]
    fn add(
        &self,
        ctx: plexus::CallContext,
        a: i64,
        b: i64,
    ) -> impl ::core::future::Future<
        Output = Result<i64, Reject>,
    > + ::core::marker::Send {
        let call = ::plexus::node::Actor::call_async(
            self,
            move |s: &mut PlexusActorState| {
                ::std::boxed::Box::pin(
                    <PlexusActorState as ChatActor>::add(s, ctx, a, b),
                ) as ::plexus::node::ActorFuture<'_, _>
            },
        );
        async move {
            match call.await {
                ::core::result::Result::Ok(reply) => reply,
                ::core::result::Result::Err(stopped) => {
                    ::core::result::Result::Err(::plexus::Reject::from(stopped))
                }
            }
        }
    }
}
/// Every linked peer of the `chat.Chat` service at once: `node.fanout::<ChatClient>(deadline)`, or every node of the mesh: `node.relay::<ChatClient>(deadline)`. One method per unary operation (a stream of replies, like `Node::broadcast`), per one-way operation, and per server-stream operation (the peers' streams merged; not relayed).
#[derive(Clone, Debug)]
pub struct ChatFanout {
    inner: ::plexus::node::Fanout,
}
#[allow(dead_code)]
impl ChatFanout {
    /// The peers it reaches: the members when it was made.
    pub fn peers(&self) -> ::std::vec::Vec<::plexus::NodeId> {
        self.inner.peers()
    }
    /// Calls `chat.Chat/post` on every peer; replies stream back as they arrive.
    pub fn post(&self, msg: Message) -> ::plexus::node::Broadcast<Receipt> {
        let body = <__ChatCodec<
            0usize,
        > as ::plexus::codec::Codec<Message>>::encode(&msg);
        self.inner.unary::<__ChatCodec<1usize>, Receipt>("chat.Chat/post", body)
    }
    /// Sends `chat.Chat/typing` to every peer; says, per peer, whether it went out.
    pub async fn typing(
        &self,
        user: String,
    ) -> ::std::vec::Vec<
        (::plexus::NodeId, ::core::result::Result<(), ::plexus::CallError>),
    > {
        let body = <__ChatCodec<
            2usize,
        > as ::plexus::codec::Codec<String>>::encode(&user);
        self.inner.oneway("chat.Chat/typing", body).await
    }
    /// Calls `chat.Chat/history` on every peer; their streams merge into one, each item tagged with its peer.
    pub fn history(&self, since: u64) -> ::plexus::node::FanoutStream<Message> {
        let body = <__ChatCodec<4usize> as ::plexus::codec::Codec<u64>>::encode(&since);
        self.inner
            .server_stream::<__ChatCodec<0usize>, Message>("chat.Chat/history", body)
    }
    /// Calls `chat.Chat/add` on every peer; replies stream back as they arrive.
    #[deprecated(note = "use post")]
    pub fn add(&self, a: i64, b: i64) -> ::plexus::node::Broadcast<i64> {
        let request = (a, b);
        let body = <__ChatCodec<
            6usize,
        > as ::plexus::codec::Codec<(i64, i64)>>::encode(&request);
        self.inner.unary::<__ChatCodec<7usize>, i64>("chat.Chat/add", body)
    }
}
impl ::core::convert::From<::plexus::node::Fanout> for ChatFanout {
    fn from(inner: ::plexus::node::Fanout) -> Self {
        Self { inner }
    }
}
/// The codec of the `chat.Chat` service's messages, one `N` per message type (generated; not for use).
#[doc(hidden)]
#[allow(non_camel_case_types)]
struct __ChatCodec<const N: usize>;
impl<const N: usize> ::plexus::codec::Format for __ChatCodec<N> {
    const NAME: &'static str = <::plexus::codec::MsgPack as ::plexus::codec::Format>::NAME;
}
impl __ChatCodec<0usize> {
    const CARRIER: ::plexus::codec::Carrier<Message> = ::plexus::codec::Carrier::<
        Message,
    >::of::<::plexus::codec::MsgPack>();
}
#[diagnostic::do_not_recommend]
impl ::plexus::codec::Codec<Message> for __ChatCodec<0usize> {
    fn encode(
        value: &Message,
    ) -> ::core::result::Result<::plexus::Bytes, ::plexus::codec::CodecError> {
        (Self::CARRIER.encode)(value)
    }
    fn encode_into(
        value: &Message,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_into)(value, buf)
    }
    fn encode_spliced(
        value: &Message,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
        holes: &mut ::std::vec::Vec<(usize, ::plexus::Bytes)>,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_spliced)(value, buf, holes)
    }
    fn decode(
        bytes: ::plexus::Bytes,
    ) -> ::core::result::Result<Message, ::plexus::codec::CodecError> {
        (Self::CARRIER.decode)(bytes)
    }
}
impl __ChatCodec<1usize> {
    const CARRIER: ::plexus::codec::Carrier<Receipt> = ::plexus::codec::Carrier::<
        Receipt,
    >::of::<::plexus::codec::MsgPack>();
}
#[diagnostic::do_not_recommend]
impl ::plexus::codec::Codec<Receipt> for __ChatCodec<1usize> {
    fn encode(
        value: &Receipt,
    ) -> ::core::result::Result<::plexus::Bytes, ::plexus::codec::CodecError> {
        (Self::CARRIER.encode)(value)
    }
    fn encode_into(
        value: &Receipt,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_into)(value, buf)
    }
    fn encode_spliced(
        value: &Receipt,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
        holes: &mut ::std::vec::Vec<(usize, ::plexus::Bytes)>,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_spliced)(value, buf, holes)
    }
    fn decode(
        bytes: ::plexus::Bytes,
    ) -> ::core::result::Result<Receipt, ::plexus::codec::CodecError> {
        (Self::CARRIER.decode)(bytes)
    }
}
impl __ChatCodec<2usize> {
    const CARRIER: ::plexus::codec::Carrier<String> = ::plexus::codec::Carrier::<
        String,
    >::of::<::plexus::codec::MsgPack>();
}
#[diagnostic::do_not_recommend]
impl ::plexus::codec::Codec<String> for __ChatCodec<2usize> {
    fn encode(
        value: &String,
    ) -> ::core::result::Result<::plexus::Bytes, ::plexus::codec::CodecError> {
        (Self::CARRIER.encode)(value)
    }
    fn encode_into(
        value: &String,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_into)(value, buf)
    }
    fn encode_spliced(
        value: &String,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
        holes: &mut ::std::vec::Vec<(usize, ::plexus::Bytes)>,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_spliced)(value, buf, holes)
    }
    fn decode(
        bytes: ::plexus::Bytes,
    ) -> ::core::result::Result<String, ::plexus::codec::CodecError> {
        (Self::CARRIER.decode)(bytes)
    }
}
impl __ChatCodec<3usize> {
    const CARRIER: ::plexus::codec::Carrier<()> = ::plexus::codec::Carrier::<
        (),
    >::of::<::plexus::codec::MsgPack>();
}
#[diagnostic::do_not_recommend]
impl ::plexus::codec::Codec<()> for __ChatCodec<3usize> {
    fn encode(
        value: &(),
    ) -> ::core::result::Result<::plexus::Bytes, ::plexus::codec::CodecError> {
        (Self::CARRIER.encode)(value)
    }
    fn encode_into(
        value: &(),
        buf: &mut ::plexus::codegen::bytes::BytesMut,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_into)(value, buf)
    }
    fn encode_spliced(
        value: &(),
        buf: &mut ::plexus::codegen::bytes::BytesMut,
        holes: &mut ::std::vec::Vec<(usize, ::plexus::Bytes)>,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_spliced)(value, buf, holes)
    }
    fn decode(
        bytes: ::plexus::Bytes,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.decode)(bytes)
    }
}
impl __ChatCodec<4usize> {
    const CARRIER: ::plexus::codec::Carrier<u64> = ::plexus::codec::Carrier::<
        u64,
    >::of::<::plexus::codec::MsgPack>();
}
#[diagnostic::do_not_recommend]
impl ::plexus::codec::Codec<u64> for __ChatCodec<4usize> {
    fn encode(
        value: &u64,
    ) -> ::core::result::Result<::plexus::Bytes, ::plexus::codec::CodecError> {
        (Self::CARRIER.encode)(value)
    }
    fn encode_into(
        value: &u64,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_into)(value, buf)
    }
    fn encode_spliced(
        value: &u64,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
        holes: &mut ::std::vec::Vec<(usize, ::plexus::Bytes)>,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_spliced)(value, buf, holes)
    }
    fn decode(
        bytes: ::plexus::Bytes,
    ) -> ::core::result::Result<u64, ::plexus::codec::CodecError> {
        (Self::CARRIER.decode)(bytes)
    }
}
impl __ChatCodec<5usize> {
    const CARRIER: ::plexus::codec::Carrier<u32> = ::plexus::codec::Carrier::<
        u32,
    >::of::<::plexus::codec::MsgPack>();
}
#[diagnostic::do_not_recommend]
impl ::plexus::codec::Codec<u32> for __ChatCodec<5usize> {
    fn encode(
        value: &u32,
    ) -> ::core::result::Result<::plexus::Bytes, ::plexus::codec::CodecError> {
        (Self::CARRIER.encode)(value)
    }
    fn encode_into(
        value: &u32,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_into)(value, buf)
    }
    fn encode_spliced(
        value: &u32,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
        holes: &mut ::std::vec::Vec<(usize, ::plexus::Bytes)>,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_spliced)(value, buf, holes)
    }
    fn decode(
        bytes: ::plexus::Bytes,
    ) -> ::core::result::Result<u32, ::plexus::codec::CodecError> {
        (Self::CARRIER.decode)(bytes)
    }
}
impl __ChatCodec<6usize> {
    const CARRIER: ::plexus::codec::Carrier<(i64, i64)> = ::plexus::codec::Carrier::<
        (i64, i64),
    >::of::<::plexus::codec::MsgPack>();
}
#[diagnostic::do_not_recommend]
impl ::plexus::codec::Codec<(i64, i64)> for __ChatCodec<6usize> {
    fn encode(
        value: &(i64, i64),
    ) -> ::core::result::Result<::plexus::Bytes, ::plexus::codec::CodecError> {
        (Self::CARRIER.encode)(value)
    }
    fn encode_into(
        value: &(i64, i64),
        buf: &mut ::plexus::codegen::bytes::BytesMut,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_into)(value, buf)
    }
    fn encode_spliced(
        value: &(i64, i64),
        buf: &mut ::plexus::codegen::bytes::BytesMut,
        holes: &mut ::std::vec::Vec<(usize, ::plexus::Bytes)>,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_spliced)(value, buf, holes)
    }
    fn decode(
        bytes: ::plexus::Bytes,
    ) -> ::core::result::Result<(i64, i64), ::plexus::codec::CodecError> {
        (Self::CARRIER.decode)(bytes)
    }
}
impl __ChatCodec<7usize> {
    const CARRIER: ::plexus::codec::Carrier<i64> = ::plexus::codec::Carrier::<
        i64,
    >::of::<::plexus::codec::MsgPack>();
}
#[diagnostic::do_not_recommend]
impl ::plexus::codec::Codec<i64> for __ChatCodec<7usize> {
    fn encode(
        value: &i64,
    ) -> ::core::result::Result<::plexus::Bytes, ::plexus::codec::CodecError> {
        (Self::CARRIER.encode)(value)
    }
    fn encode_into(
        value: &i64,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_into)(value, buf)
    }
    fn encode_spliced(
        value: &i64,
        buf: &mut ::plexus::codegen::bytes::BytesMut,
        holes: &mut ::std::vec::Vec<(usize, ::plexus::Bytes)>,
    ) -> ::core::result::Result<(), ::plexus::codec::CodecError> {
        (Self::CARRIER.encode_spliced)(value, buf, holes)
    }
    fn decode(
        bytes: ::plexus::Bytes,
    ) -> ::core::result::Result<i64, ::plexus::codec::CodecError> {
        (Self::CARRIER.decode)(bytes)
    }
}
