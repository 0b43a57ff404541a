//! The feature schemas (`schemas/features/`, compiled by `tests/build.rs`
//! with one include file): what real-world `.proto` files use compiles, and
//! every service answers end to end over TCP — well-known types everywhere,
//! several and nested packages, proto2 groups and extensions, names that
//! collide with Rust, every call kind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use plexus::{
    contract::{CallKind, Contract},
    BoxStream, CallContext, Connection, Reject, Server, Streaming,
};
use plexus_tests::{bounded, until};
use prost::Message as _;
use prost_types::{
    value::Kind as ValueKind, Any, Duration, FieldMask, FileDescriptorSet, Struct, Timestamp, Value,
};

// Generated code is held to the same lints as ours: only what a test does
// not use is allowed.
#[allow(dead_code)]
mod features {
    include!(concat!(env!("OUT_DIR"), "/features/features.rs"));
}

use features::acme::billing::{Billing, BillingClient, BillingHandler, Invoice};
use features::acme::shop::v1::admin::{self, ResultClient, ResultHandler};
use features::acme::shop::v1::item::{dimensions::Unit, Dimensions, Expiry};
use features::acme::shop::v1::{Catalog, CatalogClient, CatalogHandler, Item, Kind, Query};
use features::legacy::{record, Archive, ArchiveClient, ArchiveHandler, Record, Schema};
use features::{Ping, Pinger, PingerClient, PingerHandler};

/// An item with every well-known-type field set.
fn item(sku: &str) -> Item {
    let created = Timestamp {
        seconds: 1_700_000_000,
        nanos: 5,
    };
    Item {
        sku: sku.to_owned(),
        created: Some(created),
        shelf_life: Some(Duration {
            seconds: 86_400,
            nanos: 0,
        }),
        nickname: Some(format!("{sku}-nick")),
        attributes: Some(Struct {
            fields: [("colour".to_owned(), string_value("red"))].into(),
        }),
        mask: Some(FieldMask {
            paths: vec!["sku".into(), "labels".into()],
        }),
        nothing: Some(()),
        details: vec![Any {
            type_url: "type.googleapis.com/google.protobuf.Timestamp".into(),
            value: created.encode_to_vec(),
        }],
        restocked: vec![created, Timestamp::default()],
        labels: [("shelf".to_owned(), string_value("top"))].into(),
        seen: [("door".to_owned(), created)].into(),
        expiry: Some(Expiry::ExpiresAfter(Duration {
            seconds: 3_600,
            nanos: 0,
        })),
        discount: Some(-5),
        note: None,
        r#type: "book".into(),
        r#async: true,
        self_: 7,
        kind: Kind::Book as i32,
        size: Some(Dimensions {
            width: 1.5,
            height: 2.5,
            unit: Unit::Mm as i32,
        }),
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(ValueKind::StringValue(s.to_owned())),
    }
}

#[derive(Default)]
struct Shop {
    forgotten: AtomicU32,
}

impl Catalog for Shop {
    async fn get(&self, _ctx: CallContext, request: String) -> Result<Item, Reject> {
        if request.is_empty() {
            return Err(Reject::new(404, "no sku"));
        }
        Ok(item(&request))
    }

    async fn now(&self, _ctx: CallContext) -> Result<Timestamp, Reject> {
        Ok(Timestamp {
            seconds: 42,
            nanos: 0,
        })
    }

    async fn forget(&self, _ctx: CallContext, _request: String) {
        self.forgotten.fetch_add(1, Ordering::SeqCst);
    }

    async fn search(
        &self,
        _ctx: CallContext,
        request: Query,
    ) -> Result<BoxStream<Result<Item, Reject>>, Reject> {
        let limit = request.limit.unwrap_or(u32::MAX);
        let items: Vec<Result<Item, Reject>> = ["a", "b", "c"]
            .into_iter()
            .take(limit as usize)
            .map(|n| Ok(item(&format!("{}{n}", request.prefix))))
            .collect();
        Ok(futures_util::stream::iter(items).boxed())
    }

    async fn upload(
        &self,
        _ctx: CallContext,
        mut requests: Streaming<Item>,
    ) -> Result<u32, Reject> {
        let mut count = 0;
        while let Some(item) = requests.recv().await {
            let item = item.map_err(|e| Reject::new(400, e.to_string()))?;
            if item.created.is_none() {
                return Err(Reject::new(400, "an item without a creation time"));
            }
            count += 1;
        }
        Ok(count)
    }

    async fn watch(
        &self,
        _ctx: CallContext,
        requests: Streaming<FieldMask>,
    ) -> Result<BoxStream<Result<Struct, Reject>>, Reject> {
        Ok(requests
            .map(|mask| {
                let mask = mask.map_err(|e| Reject::new(400, e.to_string()))?;
                Ok(Struct {
                    fields: mask
                        .paths
                        .iter()
                        .map(|p| (p.clone(), string_value("watched")))
                        .collect(),
                })
            })
            .boxed())
    }
}

/// The service named `Result`, with methods named after prelude traits and
/// after the generated client's own methods.
#[derive(Default)]
struct Registry {
    dropped: AtomicU32,
}

fn option(name: &str) -> admin::Option {
    admin::Option {
        name: name.to_owned(),
        item: Some(item(name)),
    }
}

impl admin::Result for Registry {
    async fn drop(&self, _ctx: CallContext, _request: admin::Option) -> Result<(), Reject> {
        self.dropped.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn clone(
        &self,
        _ctx: CallContext,
        request: admin::Option,
    ) -> Result<admin::Option, Reject> {
        Ok(request)
    }

    async fn connect_(&self, _ctx: CallContext) -> Result<admin::Vec, Reject> {
        Ok(admin::Vec {
            options: vec![option("connected")],
            at: Some(Timestamp::default()),
        })
    }

    async fn new_(
        &self,
        _ctx: CallContext,
        request: admin::Option,
    ) -> Result<admin::Option, Reject> {
        Ok(admin::Option {
            name: format!("new {}", request.name),
            item: request.item,
        })
    }

    async fn peers_(&self, _ctx: CallContext) -> Result<admin::Vec, Reject> {
        Ok(admin::Vec {
            options: vec![option("one"), option("two")],
            at: None,
        })
    }

    async fn r#type(
        &self,
        _ctx: CallContext,
        request: admin::Vec,
    ) -> Result<BoxStream<Result<admin::Option, Reject>>, Reject> {
        Ok(futures_util::stream::iter(request.options.into_iter().map(Ok)).boxed())
    }
}

struct Accounts;

impl Billing for Accounts {
    async fn bill(&self, _ctx: CallContext, request: Item) -> Result<Invoice, Reject> {
        Ok(Invoice {
            id: format!("inv-{}", request.sku),
            kind: request.kind,
            issued: request.created,
            items: vec![request],
        })
    }
}

struct Vault;

impl Archive for Vault {
    async fn keep(&self, _ctx: CallContext, request: Record) -> Result<Record, Reject> {
        let mut kept = request;
        kept.line.push(record::Line {
            text: "kept".into(),
        });
        Ok(kept)
    }

    async fn describe(&self, _ctx: CallContext) -> Result<Schema, Reject> {
        let bytes = ArchiveClient::DESCRIPTOR
            .file_descriptor_set
            .ok_or_else(|| Reject::new(500, "no descriptor set"))?;
        let set = FileDescriptorSet::decode(bytes).map_err(|e| Reject::new(500, e.to_string()))?;
        Ok(Schema {
            file: set
                .file
                .into_iter()
                .find(|f| f.name() == "legacy/records.proto"),
        })
    }
}

struct Echo;

impl Pinger for Echo {
    async fn ping(&self, _ctx: CallContext, request: Ping) -> Result<Ping, Reject> {
        Ok(request)
    }
}

struct Served {
    server: Server,
    connection: Connection,
    shop: Arc<Shop>,
    registry: Arc<Registry>,
}

/// Every feature service on one server, and one connection to it.
async fn serve_all() -> Served {
    let shop = Arc::new(Shop::default());
    let registry = Arc::new(Registry::default());
    let server = bounded(
        "start",
        Server::bind("tcp://127.0.0.1:0")
            .serve(CatalogHandler::from_arc(shop.clone()))
            .serve(ResultHandler::from_arc(registry.clone()))
            .serve(BillingHandler::new(Accounts))
            .serve(ArchiveHandler::new(Vault))
            .serve(PingerHandler::new(Echo))
            .start(),
    )
    .await
    .expect("server starts");
    let connection = bounded("connect", Connection::connect(server.local_url()))
        .await
        .expect("connects");
    Served {
        server,
        connection,
        shop,
        registry,
    }
}

#[tokio::test]
async fn well_known_types_travel_as_fields_maps_oneofs_and_repeated() {
    let s = serve_all().await;
    let catalog = CatalogClient::new(s.connection.clone());
    let got = bounded("get", catalog.get("apple".into()))
        .await
        .expect("an item");
    assert_eq!(got, item("apple"));
    let now = bounded("now", catalog.now()).await.expect("a timestamp");
    assert_eq!(now.seconds, 42);
    let err = bounded("get nothing", catalog.get(String::new()))
        .await
        .expect_err("rejected");
    assert!(err.to_string().contains("no sku"), "{err}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn every_call_kind_with_well_known_requests_and_replies() {
    let s = serve_all().await;
    let catalog = CatalogClient::new(s.connection.clone());

    bounded("forget", catalog.forget("pear".into()))
        .await
        .expect("sent");
    until("the one-way call arrives", || {
        s.shop.forgotten.load(Ordering::SeqCst) == 1
    })
    .await;

    let found: Vec<String> = bounded("search", async {
        let stream = catalog
            .search(Query {
                prefix: "x".into(),
                limit: Some(2),
            })
            .await
            .expect("stream opens");
        stream
            .map(|item| item.expect("an item").sku)
            .collect::<Vec<_>>()
            .await
    })
    .await;
    assert_eq!(found, ["xa", "xb"]);

    let (mut sender, reply) = bounded("upload", catalog.upload()).await.expect("opens");
    for sku in ["a", "b", "c"] {
        bounded("send", sender.send(item(sku))).await.expect("sent");
    }
    bounded("finish", sender.finish()).await.expect("finished");
    assert_eq!(bounded("reply", reply).await.expect("a count"), 3);

    let (mut sender, mut replies) = bounded("watch", catalog.watch()).await.expect("opens");
    bounded(
        "send",
        sender.send(FieldMask {
            paths: vec!["sku".into()],
        }),
    )
    .await
    .expect("sent");
    let first = bounded("first reply", replies.next())
        .await
        .expect("a reply")
        .expect("a struct");
    assert_eq!(
        first.fields.get("sku"),
        Some(&string_value("watched")),
        "{first:?}"
    );
    bounded("finish", sender.finish()).await.expect("finished");
    assert!(bounded("end", replies.next()).await.is_none());
    s.server.shutdown().await;
}

#[tokio::test]
async fn names_that_collide_with_rust_get_a_usable_client() {
    let s = serve_all().await;
    let result = ResultClient::new(s.connection.clone());
    bounded("drop", result.drop(option("gone")))
        .await
        .expect("dropped");
    assert_eq!(s.registry.dropped.load(Ordering::SeqCst), 1);
    let cloned = bounded("clone", result.clone(option("twin")))
        .await
        .expect("cloned");
    assert_eq!(cloned, option("twin"));
    // `Connect`, `New` and `Peers` would shadow the client's and fanout's
    // own methods; they get a trailing underscore.
    let connected = bounded("connect_", result.connect_()).await.expect("a vec");
    assert_eq!(connected.options, vec![option("connected")]);
    let made = bounded("new_", result.new_(option("one")))
        .await
        .expect("made");
    assert_eq!(made.name, "new one");
    let peers = bounded("peers_", result.peers_()).await.expect("a vec");
    assert_eq!(peers.options.len(), 2);
    let typed: Vec<admin::Option> = bounded("type", async {
        result
            .r#type(peers.clone())
            .await
            .expect("stream opens")
            .map(|o| o.expect("an option"))
            .collect()
            .await
    })
    .await;
    assert_eq!(typed, peers.options);
    // The op ids keep the schema's names.
    let ops: Vec<&str> = ResultClient::DESCRIPTOR
        .methods
        .iter()
        .map(|m| m.op)
        .collect();
    assert_eq!(
        ops,
        [
            "acme.shop.v1.admin.Result/Drop",
            "acme.shop.v1.admin.Result/Clone",
            "acme.shop.v1.admin.Result/Connect",
            "acme.shop.v1.admin.Result/New",
            "acme.shop.v1.admin.Result/Peers",
            "acme.shop.v1.admin.Result/Type",
        ]
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn packages_use_each_others_messages() {
    let s = serve_all().await;
    let billing = BillingClient::new(s.connection.clone());
    let invoice = bounded("bill", billing.bill(item("book")))
        .await
        .expect("an invoice");
    assert_eq!(invoice.id, "inv-book");
    assert_eq!(invoice.items, vec![item("book")]);
    assert_eq!(invoice.kind(), Kind::Book);
    assert_eq!(invoice.issued, item("book").created);
    s.server.shutdown().await;
}

#[tokio::test]
async fn proto2_groups_defaults_and_required_fields_round_trip() {
    let s = serve_all().await;
    let archive = ArchiveClient::new(s.connection.clone());
    let sent = Record {
        id: "r1".into(),
        weight: None,
        label: Some("fragile".into()),
        samples: vec![1, 2, 3],
        extra: Some(record::Extra {
            origin: Some("north".into()),
            stamp: Some(9),
        }),
        line: vec![record::Line {
            text: "first".into(),
        }],
    };
    let kept = bounded("keep", archive.keep(sent.clone()))
        .await
        .expect("kept");
    assert_eq!(kept.weight(), 7, "proto2 default");
    assert_eq!(kept.label(), "fragile");
    assert_eq!(kept.extra, sent.extra);
    assert_eq!(
        kept.line
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>(),
        ["first", "kept"]
    );
    assert!(ArchiveClient::DESCRIPTOR.methods[0].idempotent);
    s.server.shutdown().await;
}

#[tokio::test]
async fn descriptor_set_keeps_extensions_custom_options_and_well_known_files() {
    let s = serve_all().await;
    let archive = ArchiveClient::new(s.connection.clone());
    let schema = bounded("describe", archive.describe())
        .await
        .expect("a schema");
    // A descriptor.proto message travelled as a field.
    let file = schema.file.expect("the records file");
    assert_eq!(file.package(), "legacy");
    assert!(
        file.extension.iter().any(|e| e.name() == "annotation"),
        "{:?}",
        file.extension
    );
    let record = file
        .message_type
        .iter()
        .find(|m| m.name() == "Record")
        .expect("Record");
    assert_eq!(record.extension_range.len(), 1);
    // Custom options survive in the descriptor (as unknown fields of the
    // standard options message).
    assert!(record.options.is_some());

    // Every service's descriptor set carries the well-known files it imports.
    let set = FileDescriptorSet::decode(
        CatalogClient::DESCRIPTOR
            .file_descriptor_set
            .expect("a proto service carries its descriptor set"),
    )
    .expect("decodes");
    let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    for wkt in [
        "timestamp",
        "duration",
        "any",
        "struct",
        "wrappers",
        "field_mask",
        "empty",
    ] {
        let name = format!("google/protobuf/{wkt}.proto");
        assert!(names.contains(&name.as_str()), "{name} in {names:?}");
    }
    assert!(names.contains(&"acme/shop/v1/catalog.proto"));
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_file_without_a_package_serves_unprefixed_op_ids() {
    let s = serve_all().await;
    let pinger = PingerClient::new(s.connection.clone());
    let pong = bounded("ping", pinger.ping(Ping { nonce: 77 }))
        .await
        .expect("pong");
    assert_eq!(pong.nonce, 77);
    assert_eq!(PingerClient::DESCRIPTOR.methods[0].op, "Pinger/Ping");
    assert_eq!(
        <CatalogClient as Contract>::DESCRIPTOR
            .methods
            .iter()
            .map(|m| (m.name, m.kind))
            .collect::<HashMap<_, _>>(),
        [
            ("Get", CallKind::Unary),
            ("Now", CallKind::Unary),
            ("Forget", CallKind::OneWay),
            ("Search", CallKind::ServerStream),
            ("Upload", CallKind::ClientStream),
            ("Watch", CallKind::Bidi),
        ]
        .into()
    );
    s.server.shutdown().await;
}
