//! Reflection and health through the public API: what every endpoint,
//! server and node answers about itself, and how health follows the
//! application and a graceful shutdown.

use std::time::Duration;

use plexus::health::{self, ServingStatus};
use plexus::reflection;
use plexus::Node;
use plexus::{Bytes, CallError, CallOptions, Connection, Reject, Router, Server};
use plexus_tests::{bounded, until};

#[plexus::service(package = "intro", version = 2)]
pub trait Adder {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> Result<i64, Reject>;
}

struct Sum;

impl Adder for Sum {
    async fn add(&self, a: i64, b: i64) -> Result<i64, Reject> {
        Ok(a + b)
    }
}

mod inventory {
    #![allow(dead_code)]
    include!(concat!(env!("OUT_DIR"), "/inventory.rs"));
}

fn raw() -> Router {
    Router::new().unary("raw.Echo/echo", |_ctx, b: Bytes| async move {
        Ok::<_, Reject>(b)
    })
}

async fn server(
    build: impl FnOnce(plexus::server::ServerBuilder) -> plexus::server::ServerBuilder,
) -> Server {
    let builder = Server::bind("tcp://127.0.0.1:0")
        .serve(AdderHandler::new(Sum))
        .serve(raw());
    bounded("server starts", build(builder).start())
        .await
        .expect("listens")
}

async fn connect(server: &Server) -> Connection {
    bounded(
        "connect",
        Connection::connect(&server.local_url().to_string()),
    )
    .await
    .expect("connects")
}

fn opts() -> CallOptions {
    CallOptions::new().timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn reflection_describes_contracts_parameters_and_raw_operations() {
    let server = server(|b| b).await;
    let conn = connect(&server).await;
    let d = bounded("describe", reflection::describe(&conn, None, opts()))
        .await
        .expect("described");
    assert_eq!(d.node_id, server.endpoint().node_id().to_string());
    assert!(d.node.is_none(), "a server is not a node");
    let adder = d.service("intro.Adder").expect("intro.Adder");
    assert_eq!(adder.version, 2);
    assert_eq!(adder.codec, "msgpack");
    assert_eq!(adder.fingerprint, AdderClient::DESCRIPTOR.fingerprint);
    assert!(adder.file_descriptor_set.is_none());
    let add = &adder.operations[0];
    assert_eq!(
        (add.op.as_str(), add.kind.as_str()),
        ("intro.Adder/add", "unary")
    );
    assert_eq!(add.docs, "Adds two numbers.");
    let params: Vec<(&str, &str)> = add
        .request
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.ty.as_str()))
        .collect();
    assert_eq!(params, [("a", "i64"), ("b", "i64")]);
    assert_eq!(add.reply.type_name, "i64");
    for op in [
        "intro.Adder/add",
        "raw.Echo/echo",
        reflection::DESCRIBE_OP,
        health::CHECK_OP,
        health::WATCH_OP,
        "plexus.Session/open",
    ] {
        assert!(
            d.operations.iter().any(|o| o == op),
            "{op} in {:?}",
            d.operations
        );
    }
    let unknown = reflection::describe(&conn, Some("intro.Subtractor"), opts()).await;
    match unknown {
        Err(CallError::Rejected(r)) => {
            assert_eq!(r.code(), reflection::UNKNOWN_SERVICE);
            assert!(r.message().contains("served: intro.Adder"), "{r}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn reflection_carries_the_descriptor_set_of_a_proto_contract() {
    struct Nothing;
    impl inventory::Inventory for Nothing {
        async fn lookup(
            &self,
            _: plexus::CallContext,
            _: inventory::ItemId,
        ) -> Result<inventory::Item, Reject> {
            Err(Reject::new(404, "empty"))
        }
        async fn adjust(
            &self,
            _: plexus::CallContext,
            _: inventory::Adjustment,
        ) -> Result<inventory::Item, Reject> {
            Err(Reject::new(404, "empty"))
        }
        async fn touch(&self, _: plexus::CallContext, _: inventory::ItemId) {}
        async fn touches(&self, _: plexus::CallContext) -> Result<inventory::Summary, Reject> {
            Ok(inventory::Summary { count: 0, total: 0 })
        }
        async fn list(
            &self,
            _: plexus::CallContext,
        ) -> Result<plexus::BoxStream<Result<inventory::Item, Reject>>, Reject> {
            Ok(Box::pin(futures_util::stream::empty()))
        }
        async fn restock(
            &self,
            _: plexus::CallContext,
            _: plexus::Streaming<inventory::Adjustment>,
        ) -> Result<inventory::Summary, Reject> {
            Ok(inventory::Summary { count: 0, total: 0 })
        }
        async fn sync(
            &self,
            _: plexus::CallContext,
            _: plexus::Streaming<inventory::Adjustment>,
        ) -> Result<plexus::BoxStream<Result<inventory::Item, Reject>>, Reject> {
            Ok(Box::pin(futures_util::stream::empty()))
        }
    }
    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(inventory::InventoryHandler::new(Nothing))
        .start()
        .await
        .expect("listens");
    let conn = connect(&server).await;
    let d = reflection::describe(&conn, Some("inventory.Inventory"), opts())
        .await
        .expect("described");
    let service = &d.services[0];
    assert_eq!(service.codec, "protobuf");
    let set = service
        .file_descriptor_set
        .as_ref()
        .expect("a descriptor set");
    let decoded =
        <prost_types::FileDescriptorSet as prost::Message>::decode(set.clone()).expect("decodes");
    assert!(
        decoded.file.iter().any(|f| f.name() == "inventory.proto"),
        "{:?}",
        decoded.file.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
    let lookup = &service.operations[0];
    assert_eq!(lookup.request.type_name, "inventory.ItemId");
    assert_eq!(lookup.reply.type_name, "inventory.Item");
    assert!(lookup.request.params.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn a_node_adds_its_name_group_and_roles() {
    let node = Node::builder("zed")
        .group("lab")
        .discovery(plexus::discovery::Static::new(Vec::<String>::new()))
        .serve(AdderHandler::new(Sum))
        .start()
        .await
        .expect("node");
    let conn = bounded(
        "connect",
        Connection::connect(&node.local_urls()[0].to_string()),
    )
    .await
    .expect("connects");
    let d = reflection::describe(&conn, None, opts())
        .await
        .expect("described");
    let info = d.node.expect("node info");
    assert_eq!(info.name, "zed");
    assert_eq!(info.group.as_deref(), Some("lab"));
    assert_eq!(info.endpoints, [node.local_urls()[0].to_string()]);
    assert_eq!(info.participation.len(), 1);
    assert_eq!(info.participation[0].service, "intro.Adder");
    // Group-scoped: the wire keeps the scope's first name.
    assert_eq!(info.participation[0].scope, "session");
    assert!(info.participation[0].serves);
    assert!(d.operations.iter().any(|o| o == "plexus.Node/describe"));
    node.stop().await.expect("stops");
}

#[tokio::test]
async fn reflection_and_health_can_be_left_out() {
    let server = server(|b| b.without_reflection().without_health()).await;
    let conn = connect(&server).await;
    assert!(matches!(
        reflection::describe(&conn, None, opts()).await,
        Err(CallError::NoSuchOperation { .. })
    ));
    assert!(matches!(
        health::check(&conn, "", opts()).await,
        Err(CallError::NoSuchOperation { .. })
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn health_follows_what_the_application_sets() {
    let server = server(|b| b).await;
    let conn = connect(&server).await;
    assert_eq!(
        health::check(&conn, "", opts()).await.expect("overall"),
        ServingStatus::Serving
    );
    assert_eq!(
        health::check(&conn, "intro.Adder", opts())
            .await
            .expect("adder"),
        ServingStatus::Serving
    );
    match health::check(&conn, "intro.Nope", opts()).await {
        Err(CallError::Rejected(r)) => assert_eq!(r.code(), health::UNKNOWN_SERVICE),
        other => panic!("expected unknown, got {other:?}"),
    }
    let mut watch = health::watch(&conn, "intro.Adder", CallOptions::new())
        .await
        .expect("watch");
    assert_eq!(
        watch.recv().await.expect("first").expect("status"),
        ServingStatus::Serving
    );
    server
        .health()
        .set("intro.Adder", ServingStatus::NotServing);
    assert_eq!(
        bounded("change", watch.recv())
            .await
            .expect("second")
            .expect("status"),
        ServingStatus::NotServing
    );
    assert_eq!(
        health::check(&conn, "intro.Adder", opts())
            .await
            .expect("adder"),
        ServingStatus::NotServing
    );
    let mut later = health::watch(&conn, "intro.Later", CallOptions::new())
        .await
        .expect("watch");
    assert_eq!(
        later.recv().await.expect("first").expect("status"),
        ServingStatus::ServiceUnknown
    );
    server.health().set("intro.Later", ServingStatus::Serving);
    assert_eq!(
        bounded("added", later.recv())
            .await
            .expect("second")
            .expect("status"),
        ServingStatus::Serving
    );
    server.health().remove("intro.Later");
    assert_eq!(
        bounded("removed", later.recv())
            .await
            .expect("third")
            .expect("status"),
        ServingStatus::ServiceUnknown
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_drain_reports_not_serving_while_still_serving_then_ends_watches() {
    let server = std::sync::Arc::new(server(|b| b).await);
    let conn = connect(&server).await;
    let mut watch = health::watch(&conn, "", CallOptions::new())
        .await
        .expect("watch");
    assert_eq!(
        watch.recv().await.expect("first").expect("status"),
        ServingStatus::Serving
    );
    let draining = tokio::spawn({
        let server = server.clone();
        async move { server.drain(Duration::from_secs(2)).await }
    });
    until("the drain begins", || server.health().is_draining()).await;
    assert_eq!(
        bounded("told", watch.recv())
            .await
            .expect("second")
            .expect("status"),
        ServingStatus::NotServing
    );
    // During the grace period new connections and calls are still served.
    let fresh = connect(&server).await;
    assert_eq!(
        health::check(&fresh, "intro.Adder", opts())
            .await
            .expect("check"),
        ServingStatus::NotServing
    );
    let adder = AdderClient::new(fresh.clone());
    assert_eq!(adder.add(2, 3).await.expect("still served"), 5);
    // Once shut down, the watch ends.
    assert!(bounded("the watch ends", watch.recv())
        .await
        .is_none_or(|r| r.is_err()));
    bounded("drained", draining).await.expect("joined");
}
