//! `.proto` contracts compiled by `plexus_codegen::compile_protos` (see
//! `tests/build.rs`) end to end over real TCP connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use plexus::{
    contract::CallKind, BoxStream, Bytes, CallContext, CallError, CallOptions, Reject, Server,
    Streaming,
};
use plexus_tests::bounded;

#[allow(clippy::all, missing_docs, dead_code)]
mod inventory {
    include!(concat!(env!("OUT_DIR"), "/inventory.rs"));
}

use inventory::{Adjustment, Inventory, InventoryClient, InventoryHandler, Item, ItemId, Summary};

struct Warehouse {
    stock: Mutex<BTreeMap<String, i64>>,
    touches: AtomicU32,
}

impl Warehouse {
    fn new() -> Self {
        let stock = [("apple", 3), ("pear", 0)]
            .map(|(k, v)| (k.to_owned(), v))
            .into();
        Warehouse {
            stock: Mutex::new(stock),
            touches: AtomicU32::new(0),
        }
    }

    fn apply(&self, adj: &Adjustment) -> Result<Item, Reject> {
        let mut stock = self
            .stock
            .lock()
            .map_err(|_| Reject::new(500, "poisoned"))?;
        let quantity = stock.get(&adj.sku).copied().unwrap_or(0) + adj.delta;
        if quantity < 0 {
            return Err(Reject::new(409, format!("{} would go negative", adj.sku)));
        }
        stock.insert(adj.sku.clone(), quantity);
        Ok(Item {
            sku: adj.sku.clone(),
            name: adj.sku.to_uppercase(),
            quantity,
        })
    }
}

impl Inventory for Warehouse {
    async fn lookup(&self, _ctx: CallContext, request: ItemId) -> Result<Item, Reject> {
        let stock = self
            .stock
            .lock()
            .map_err(|_| Reject::new(500, "poisoned"))?;
        match stock.get(&request.sku) {
            Some(q) => Ok(Item {
                sku: request.sku.clone(),
                name: request.sku.to_uppercase(),
                quantity: *q,
            }),
            None => Err(Reject::new(404, format!("no item {}", request.sku))),
        }
    }

    async fn adjust(&self, _ctx: CallContext, request: Adjustment) -> Result<Item, Reject> {
        self.apply(&request)
    }

    async fn touch(&self, _ctx: CallContext, _request: ItemId) {
        self.touches.fetch_add(1, Ordering::SeqCst);
    }

    async fn touches(&self, _ctx: CallContext) -> Result<Summary, Reject> {
        Ok(Summary {
            count: self.touches.load(Ordering::SeqCst),
            total: 0,
        })
    }

    async fn list(&self, _ctx: CallContext) -> Result<BoxStream<Result<Item, Reject>>, Reject> {
        let stock = self
            .stock
            .lock()
            .map_err(|_| Reject::new(500, "poisoned"))?;
        Ok(stream_stock(&stock))
    }

    async fn restock(
        &self,
        _ctx: CallContext,
        requests: Streaming<Adjustment>,
    ) -> Result<Summary, Reject> {
        restock_with(requests, |adj| self.apply(adj)).await
    }

    async fn sync(
        &self,
        _ctx: CallContext,
        requests: Streaming<Adjustment>,
    ) -> Result<BoxStream<Result<Item, Reject>>, Reject> {
        // Items are applied to a private ledger: the stream outlives `&self`.
        let mut ledger: BTreeMap<String, i64> = BTreeMap::new();
        Ok(requests
            .map(move |adj| {
                let adj = adj.map_err(|e| Reject::new(400, e.to_string()))?;
                let q = ledger.entry(adj.sku.clone()).or_insert(0);
                *q += adj.delta;
                if *q < 0 {
                    return Err(Reject::new(409, format!("{} would go negative", adj.sku)));
                }
                Ok(Item {
                    sku: adj.sku.clone(),
                    name: adj.sku.to_uppercase(),
                    quantity: *q,
                })
            })
            .boxed())
    }
}

/// Every item of `stock`, in sku order, as a reply stream.
fn stream_stock(stock: &BTreeMap<String, i64>) -> BoxStream<Result<Item, Reject>> {
    let items: Vec<Result<Item, Reject>> = stock
        .iter()
        .map(|(sku, q)| {
            Ok(Item {
                sku: sku.clone(),
                name: sku.to_uppercase(),
                quantity: *q,
            })
        })
        .collect();
    futures_util::stream::iter(items).boxed()
}

/// Applies every adjustment of a restock stream; sums them up.
async fn restock_with(
    mut requests: Streaming<Adjustment>,
    mut apply: impl FnMut(&Adjustment) -> Result<Item, Reject>,
) -> Result<Summary, Reject> {
    let mut summary = Summary { count: 0, total: 0 };
    while let Some(adj) = requests.recv().await {
        let adj = adj.map_err(|e| Reject::new(400, e.to_string()))?;
        apply(&adj)?;
        summary.count += 1;
        summary.total += adj.delta;
    }
    Ok(summary)
}

async fn serve_warehouse() -> (Server, InventoryClient) {
    let server = bounded(
        "start",
        Server::bind("tcp://127.0.0.1:0")
            .serve(InventoryHandler::new(Warehouse::new()))
            .start(),
    )
    .await
    .expect("server starts");
    let client = bounded("connect", InventoryClient::connect(server.local_url()))
        .await
        .expect("client connects");
    (server, client)
}

fn adj(sku: &str, delta: i64) -> Adjustment {
    Adjustment {
        sku: sku.into(),
        delta,
    }
}

#[tokio::test]
async fn unary_call_round_trips() {
    let (_server, inv) = serve_warehouse().await;
    let item = bounded(
        "lookup",
        inv.lookup(ItemId {
            sku: "apple".into(),
        }),
    )
    .await
    .expect("found");
    assert_eq!(item.quantity, 3);
    let item = bounded("adjust", inv.adjust(adj("apple", 2)))
        .await
        .expect("adjusted");
    assert_eq!(item.quantity, 5);
}

#[tokio::test]
async fn rejected_call_carries_code_and_reason() {
    let (_server, inv) = serve_warehouse().await;
    match bounded("lookup", inv.lookup(ItemId { sku: "plum".into() })).await {
        Err(CallError::Rejected(r)) => {
            assert_eq!(r.code(), 404);
            assert_eq!(r.message(), "no item plum");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let err = bounded("adjust", inv.adjust(adj("pear", -1)))
        .await
        .expect_err("would go negative");
    assert_eq!(err.as_reject().map(Reject::code), Some(409));
}

#[tokio::test]
async fn oneway_call_arrives() {
    let (_server, inv) = serve_warehouse().await;
    for _ in 0..3 {
        bounded(
            "touch",
            inv.touch(ItemId {
                sku: "apple".into(),
            }),
        )
        .await
        .expect("sent");
    }
    bounded("touches", async {
        while inv.touches().await.expect("touches").count < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn server_stream_round_trips() {
    let (_server, inv) = serve_warehouse().await;
    let items = bounded("list", inv.list()).await.expect("stream opens");
    let skus: Vec<(String, i64)> = bounded(
        "items",
        items
            .map(|i| i.expect("item"))
            .map(|i| (i.sku, i.quantity))
            .collect(),
    )
    .await;
    assert_eq!(skus, [("apple".to_owned(), 3), ("pear".to_owned(), 0)]);
}

#[tokio::test]
async fn client_stream_round_trips() {
    let (_server, inv) = serve_warehouse().await;
    let (mut tx, reply) = bounded("restock", inv.restock())
        .await
        .expect("stream opens");
    for delta in [1, 2, 3] {
        bounded("send", tx.send(adj("pear", delta)))
            .await
            .expect("sent");
    }
    bounded("finish", tx.finish()).await.expect("finished");
    let summary = bounded("reply", reply).await.expect("summary");
    assert_eq!((summary.count, summary.total), (3, 6));
    let pear = bounded("lookup", inv.lookup(ItemId { sku: "pear".into() }))
        .await
        .expect("found");
    assert_eq!(pear.quantity, 6);
}

#[tokio::test]
async fn bidi_stream_round_trips_and_ends_with_a_rejection() {
    let (_server, inv) = serve_warehouse().await;
    let (mut tx, mut rx) = bounded("sync", inv.sync()).await.expect("stream opens");
    bounded("send", tx.send(adj("fig", 4))).await.expect("sent");
    assert_eq!(
        bounded("recv", rx.recv())
            .await
            .expect("item")
            .expect("ok")
            .quantity,
        4
    );
    bounded("send", tx.send(adj("fig", -1)))
        .await
        .expect("sent");
    assert_eq!(
        bounded("recv", rx.recv())
            .await
            .expect("item")
            .expect("ok")
            .quantity,
        3
    );
    bounded("send", tx.send(adj("fig", -10)))
        .await
        .expect("sent");
    match bounded("recv", rx.recv()).await {
        Some(Err(CallError::Rejected(r))) => assert_eq!(r.code(), 409),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn undecodable_payloads_and_unknown_operations_are_typed_errors() {
    let (_server, inv) = serve_warehouse().await;
    // Field 1 announced as length-delimited with a length running past the end.
    let garbage = Bytes::from_static(&[0x0a, 0xff, 0x01]);
    let err = bounded(
        "raw",
        inv.connection()
            .call("inventory.Inventory/Lookup", garbage, CallOptions::new()),
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, CallError::Decode { .. }), "got {err:?}");
    let err = bounded(
        "raw",
        inv.connection()
            .call("inventory.Inventory/Nope", Bytes::new(), CallOptions::new()),
    )
    .await
    .expect_err("unknown");
    assert!(
        matches!(err, CallError::NoSuchOperation { .. }),
        "got {err:?}"
    );
    assert!(bounded(
        "lookup",
        inv.lookup(ItemId {
            sku: "apple".into()
        })
    )
    .await
    .is_ok());
}

#[test]
fn descriptor_describes_the_contract() {
    let d = InventoryClient::DESCRIPTOR;
    assert_eq!(d.full_name, "inventory.Inventory");
    assert_eq!(d.version, 3);
    assert_eq!(d.roles, ["clerk", "auditor"]);
    assert_eq!(d.codec, "protobuf");
    assert_eq!(d.docs, "Stock levels of one warehouse.");
    let ops: Vec<(&str, CallKind, Option<&str>, bool)> = d
        .methods
        .iter()
        .map(|m| (m.op, m.kind, m.role, m.idempotent))
        .collect();
    assert_eq!(
        ops,
        [
            ("inventory.Inventory/Lookup", CallKind::Unary, None, true),
            (
                "inventory.Inventory/Adjust",
                CallKind::Unary,
                Some("clerk"),
                false
            ),
            ("inventory.Inventory/Touch", CallKind::OneWay, None, false),
            ("inventory.Inventory/Touches", CallKind::Unary, None, true),
            (
                "inventory.Inventory/List",
                CallKind::ServerStream,
                None,
                true
            ),
            (
                "inventory.Inventory/Restock",
                CallKind::ClientStream,
                Some("clerk"),
                false
            ),
            (
                "inventory.Inventory/Sync",
                CallKind::Bidi,
                Some("auditor"),
                false
            ),
        ]
    );
    // The descriptor set decodes and holds the service and its imports.
    let set = d
        .file_descriptor_set
        .expect("a .proto service carries its descriptor set");
    let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(set).expect("decodes");
    let names: Vec<&str> = fds
        .file
        .iter()
        .map(|f| f.name.as_deref().unwrap_or(""))
        .collect();
    assert!(names.contains(&"inventory.proto"), "{names:?}");
    assert!(names.contains(&"google/protobuf/empty.proto"), "{names:?}");
    let inventory = fds
        .file
        .iter()
        .find(|f| f.name.as_deref() == Some("inventory.proto"))
        .expect("file");
    let services: Vec<&str> = inventory
        .service
        .iter()
        .map(|s| s.name.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(services, ["Inventory", "StockChanges"]);
    assert_eq!(inventory.service[0].method.len(), 7);
}

/// The same contract on `&mut self` state: the generated `InventoryActor`,
/// served through `plexus::node::Actor`. No lock anywhere.
struct Ledger {
    stock: BTreeMap<String, i64>,
    touches: u32,
}

impl Ledger {
    fn apply(&mut self, adj: &Adjustment) -> Result<Item, Reject> {
        let q = self.stock.entry(adj.sku.clone()).or_insert(0);
        if *q + adj.delta < 0 {
            return Err(Reject::new(409, format!("{} would go negative", adj.sku)));
        }
        *q += adj.delta;
        Ok(Item {
            sku: adj.sku.clone(),
            name: adj.sku.to_uppercase(),
            quantity: *q,
        })
    }
}

impl inventory::InventoryActor for Ledger {
    async fn lookup(&mut self, _ctx: CallContext, request: ItemId) -> Result<Item, Reject> {
        self.apply(&adj(&request.sku, 0))
    }

    async fn adjust(&mut self, _ctx: CallContext, request: Adjustment) -> Result<Item, Reject> {
        // State held across an await: no other call runs meanwhile.
        let before = self.stock.get(&request.sku).copied();
        tokio::task::yield_now().await;
        assert_eq!(self.stock.get(&request.sku).copied(), before);
        self.apply(&request)
    }

    async fn touch(&mut self, _ctx: CallContext, _request: ItemId) {
        self.touches += 1;
    }

    async fn touches(&mut self, _ctx: CallContext) -> Result<Summary, Reject> {
        Ok(Summary {
            count: self.touches,
            total: 0,
        })
    }

    async fn list(&mut self, _ctx: CallContext) -> Result<BoxStream<Result<Item, Reject>>, Reject> {
        Ok(stream_stock(&self.stock))
    }

    async fn restock(
        &mut self,
        _ctx: CallContext,
        requests: Streaming<Adjustment>,
    ) -> Result<Summary, Reject> {
        restock_with(requests, |adj| self.apply(adj)).await
    }

    async fn sync(
        &mut self,
        _ctx: CallContext,
        _requests: Streaming<Adjustment>,
    ) -> Result<BoxStream<Result<Item, Reject>>, Reject> {
        Err(Reject::new(501, "not in the ledger"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proto_service_runs_on_mut_self_state_in_an_actor() {
    let ledger = Ledger {
        stock: BTreeMap::new(),
        touches: 0,
    };
    let server = bounded(
        "start",
        Server::bind("tcp://127.0.0.1:0")
            .serve(InventoryHandler::new(plexus::node::Actor::spawn(ledger)))
            .start(),
    )
    .await
    .expect("server starts");
    let inv = bounded("connect", InventoryClient::connect(server.local_url()))
        .await
        .expect("client connects");
    // 300 concurrent increments: none lost, each saw a distinct quantity.
    let calls = (0..300).map(|_| {
        let inv = inv.clone();
        async move { inv.adjust(adj("apple", 1)).await }
    });
    let mut seen: Vec<i64> = bounded("adjusts", futures_util::future::join_all(calls))
        .await
        .into_iter()
        .map(|r| r.expect("adjusted").quantity)
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=300).collect::<Vec<_>>());
    let err = bounded("adjust", inv.adjust(adj("apple", -301)))
        .await
        .expect_err("would go negative");
    assert_eq!(err.as_reject().map(Reject::code), Some(409));

    for _ in 0..5 {
        inv.touch(ItemId {
            sku: "apple".into(),
        })
        .await
        .expect("sent");
    }
    // One-way messages are queued in the actor as they arrive; wait for all.
    bounded("5 touches", async {
        while inv.touches().await.expect("touches").count < 5 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(inv.touches().await.expect("touches").count, 5);
    let (mut tx, reply) = bounded("restock", inv.restock())
        .await
        .expect("stream opens");
    for delta in [2, 3] {
        bounded("send", tx.send(adj("pear", delta)))
            .await
            .expect("sent");
    }
    bounded("finish", tx.finish()).await.expect("finished");
    let summary = bounded("reply", reply).await.expect("summary");
    assert_eq!((summary.count, summary.total), (2, 5));
    let items = bounded("list", inv.list()).await.expect("stream opens");
    let items: Vec<Item> = bounded("items", items.map(|i| i.expect("item")).collect()).await;
    assert_eq!(
        items
            .iter()
            .map(|i| (i.sku.as_str(), i.quantity))
            .collect::<Vec<_>>(),
        [("apple", 300), ("pear", 5)]
    );
}
