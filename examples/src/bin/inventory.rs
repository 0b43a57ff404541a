//! A service defined in a `.proto` file (`schemas/examples/inventory.proto`),
//! compiled by `plexus_codegen::compile_protos` in `build.rs`, served and
//! called over TCP in one process.
//!
//! ```text
//! cargo run -p plexus-examples --bin inventory          # listens on tcp://127.0.0.1:<any>
//! cargo run -p plexus-examples --bin inventory -- tcp://127.0.0.1:4001
//! cargo run -p plexus-examples --bin inventory -- serve tcp://127.0.0.1:4001   # until Ctrl-C
//! cargo run -p plexus-examples --bin inventory -- serve ws://127.0.0.1:4001 [--tls-dir DIR]
//! cargo run -p plexus-examples --bin inventory -- descriptor-set inventory.fds
//! ```
//!
//! While it serves, the `plexus` command converts JSON through the contract's
//! descriptor set:
//!
//! ```text
//! plexus describe tcp://127.0.0.1:4001 inventory.Inventory/Lookup
//! plexus call tcp://127.0.0.1:4001 inventory.Inventory/Lookup '{"sku": "apple"}'
//! plexus call tcp://127.0.0.1:4001 inventory.Inventory/List
//! printf '{"sku":"pear","delta":2}\n{"sku":"fig","delta":1}\n' | plexus call tcp://127.0.0.1:4001 inventory.Inventory/Restock
//! ```
//!
//! `serve` only serves (for clients in other processes and languages);
//! `descriptor-set` writes the contract's protobuf `FileDescriptorSet`, from
//! which a client without the `.proto` (the Python client, say) builds the
//! message classes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use futures_util::StreamExt;
use plexus::{BoxStream, CallContext, Reject, Server, Streaming};

/// Messages (prost) and the service's trait, client and handler (Plexus).
mod inventory {
    // The whole generated API is here; this example uses only part of it.
    #![allow(dead_code)]
    plexus::include_proto!("inventory");
}

use inventory::{Adjustment, Inventory, InventoryClient, InventoryHandler, Item, ItemId, Summary};

/// An in-memory warehouse.
struct Warehouse {
    stock: Mutex<BTreeMap<String, i64>>,
    touches: AtomicU32,
}

impl Warehouse {
    fn item(sku: &str, quantity: i64) -> Item {
        Item {
            sku: sku.to_owned(),
            name: sku.to_uppercase(),
            quantity,
        }
    }

    fn apply(&self, adjustment: &Adjustment) -> Result<Item, Reject> {
        let mut stock = self
            .stock
            .lock()
            .map_err(|_| Reject::new(500, "stock is unavailable"))?;
        let quantity = stock.get(&adjustment.sku).copied().unwrap_or(0) + adjustment.delta;
        if quantity < 0 {
            return Err(Reject::new(
                409,
                format!("{} would go negative", adjustment.sku),
            ));
        }
        stock.insert(adjustment.sku.clone(), quantity);
        Ok(Self::item(&adjustment.sku, quantity))
    }

    fn snapshot(&self) -> Result<Vec<Item>, Reject> {
        let stock = self
            .stock
            .lock()
            .map_err(|_| Reject::new(500, "stock is unavailable"))?;
        Ok(stock.iter().map(|(sku, q)| Self::item(sku, *q)).collect())
    }
}

impl Inventory for Warehouse {
    async fn lookup(&self, _ctx: CallContext, request: ItemId) -> Result<Item, Reject> {
        self.snapshot()?
            .into_iter()
            .find(|item| item.sku == request.sku)
            .ok_or_else(|| Reject::new(404, format!("no item {}", request.sku)))
    }

    async fn adjust(&self, _ctx: CallContext, request: Adjustment) -> Result<Item, Reject> {
        self.apply(&request)
    }

    async fn touch(&self, _ctx: CallContext, _request: ItemId) {
        self.touches.fetch_add(1, Ordering::Relaxed);
    }

    async fn touches(&self, _ctx: CallContext) -> Result<Summary, Reject> {
        Ok(Summary {
            count: self.touches.load(Ordering::Relaxed),
            total: 0,
        })
    }

    async fn list(&self, _ctx: CallContext) -> Result<BoxStream<Result<Item, Reject>>, Reject> {
        Ok(futures_util::stream::iter(self.snapshot()?.into_iter().map(Ok)).boxed())
    }

    async fn restock(
        &self,
        _ctx: CallContext,
        mut requests: Streaming<Adjustment>,
    ) -> Result<Summary, Reject> {
        let mut summary = Summary { count: 0, total: 0 };
        while let Some(adjustment) = requests.recv().await {
            let adjustment = adjustment.map_err(|e| Reject::new(400, e.to_string()))?;
            self.apply(&adjustment)?;
            summary.count += 1;
            summary.total += adjustment.delta;
        }
        Ok(summary)
    }

    async fn sync(
        &self,
        _ctx: CallContext,
        requests: Streaming<Adjustment>,
    ) -> Result<BoxStream<Result<Item, Reject>>, Reject> {
        // The reply stream outlives this call's `&self`, so it keeps its own tally.
        let mut tally: BTreeMap<String, i64> = BTreeMap::new();
        Ok(requests
            .map(move |adjustment| {
                let adjustment = adjustment.map_err(|e| Reject::new(400, e.to_string()))?;
                let quantity = tally.entry(adjustment.sku.clone()).or_insert(0);
                *quantity += adjustment.delta;
                Ok(Warehouse::item(&adjustment.sku, *quantity))
            })
            .boxed())
    }
}

async fn serve(bind: &str, tls_dir: Option<&Path>) -> Result<Server, Box<dyn std::error::Error>> {
    let warehouse = Warehouse {
        stock: Mutex::new([("apple".to_owned(), 3), ("pear".to_owned(), 1)].into()),
        touches: AtomicU32::new(0),
    };
    let mut server = Server::bind(bind).serve(InventoryHandler::new(warehouse));
    if let Some(dir) = tls_dir {
        server = server.tls(plexus_examples::server_tls(dir)?);
    }
    let server = server.start().await?;
    println!(
        "serving {} at {}",
        InventoryClient::DESCRIPTOR.full_name,
        server.local_url()
    );
    Ok(server)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let tls_dir = plexus_examples::take_tls_dir(&mut args)?;
    let bind = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", url] => {
            let server = serve(url, tls_dir.as_deref()).await?;
            tokio::signal::ctrl_c().await?;
            server.drain(std::time::Duration::from_millis(500)).await;
            return Ok(());
        }
        ["descriptor-set", file] => {
            let set = InventoryClient::DESCRIPTOR
                .file_descriptor_set
                .ok_or("the contract carries no descriptor set")?;
            std::fs::write(file, set)?;
            println!("wrote {} bytes to {file}", set.len());
            return Ok(());
        }
        [] => "tcp://127.0.0.1:0".to_owned(),
        [url] => (*url).to_owned(),
        _ => {
            eprintln!(
                "usage: inventory [<url> | serve <url> | descriptor-set <file>] [--tls-dir DIR]"
            );
            std::process::exit(2);
        }
    };
    let server = serve(&bind, tls_dir.as_deref()).await?;

    let inventory = InventoryClient::connect(server.local_url()).await?;
    let apple = inventory
        .lookup(ItemId {
            sku: "apple".to_owned(),
        })
        .await?;
    println!("lookup: {} x{}", apple.name, apple.quantity);
    inventory
        .touch(ItemId {
            sku: "apple".to_owned(),
        })
        .await?;

    match inventory
        .adjust(Adjustment {
            sku: "pear".to_owned(),
            delta: -5,
        })
        .await
    {
        Err(e) => println!("adjust refused: {e}"),
        Ok(item) => println!("adjust: {item:?}"),
    }

    let (mut restock, summary) = inventory.restock().await?;
    for delta in [2, 3] {
        restock
            .send(Adjustment {
                sku: "pear".to_owned(),
                delta,
            })
            .await?;
    }
    restock.finish().await?;
    let summary = summary.await?;
    println!(
        "restock: {} adjustments, {:+} units",
        summary.count, summary.total
    );

    let mut items = inventory.list().await?;
    while let Some(item) = items.next().await {
        let item = item?;
        println!("list: {} x{}", item.sku, item.quantity);
    }

    let (mut changes, mut updates) = inventory.sync().await?;
    changes
        .send(Adjustment {
            sku: "fig".to_owned(),
            delta: 4,
        })
        .await?;
    if let Some(update) = updates.next().await {
        println!("sync: {:?}", update?);
    }
    changes.finish().await?;

    let descriptor = InventoryClient::DESCRIPTOR;
    println!(
        "descriptor: {} v{}, fingerprint {:016x}, {} bytes of FileDescriptorSet",
        descriptor.full_name,
        descriptor.version,
        descriptor.fingerprint,
        descriptor.file_descriptor_set.map_or(0, <[u8]>::len)
    );
    server.shutdown().await;
    Ok(())
}
