//! Generated clients over a reconnecting connection: an operation marked
//! idempotent (`#[idempotent]`, `(plexus.idempotent)`, `idempotency_level`)
//! is retried on the next link when its server dies mid-call; any other
//! operation fails with `ConnectionLost`, because it may already have run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plexus::{
    retry::Backoff, server::IntoRouter, CallContext, CallError, CallOptions, Endpoint, Reject,
    Server,
};
use plexus_tests::{bounded, until};

#[plexus::service(package = "test")]
pub trait Kv {
    /// Reading twice is harmless.
    #[idempotent]
    async fn get(&self, key: String) -> Result<String, Reject>;
    /// Writing twice is not.
    async fn put(&self, key: String) -> Result<String, Reject>;
}

#[allow(clippy::all, missing_docs, dead_code)]
mod features {
    include!(concat!(env!("OUT_DIR"), "/features/features.rs"));
}

use features::legacy::{Archive, ArchiveClient, ArchiveHandler, Record, Schema};

/// Counts the calls it gets; when `hang`, never answers them.
#[derive(Clone)]
struct Store {
    hits: Arc<AtomicUsize>,
    hang: bool,
}

impl Store {
    async fn answer(&self, key: String) -> Result<String, Reject> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(key)
    }
}

impl Kv for Store {
    async fn get(&self, key: String) -> Result<String, Reject> {
        self.answer(key).await
    }

    async fn put(&self, key: String) -> Result<String, Reject> {
        self.answer(key).await
    }
}

impl Archive for Store {
    async fn keep(&self, _ctx: CallContext, request: Record) -> Result<Record, Reject> {
        self.answer(request.id.clone()).await?;
        Ok(request)
    }

    async fn describe(&self, _ctx: CallContext) -> Result<Schema, Reject> {
        self.answer(String::new()).await?;
        Ok(Schema { file: None })
    }
}

async fn start_on(url: &str, service: impl IntoRouter + Clone) -> Server {
    // The old listener's port may take a moment to free up.
    bounded("bind", async {
        loop {
            match Server::bind(url).serve(service.clone()).start().await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
}

fn backoff() -> Backoff {
    Backoff::new()
        .initial(Duration::from_millis(10))
        .max(Duration::from_millis(100))
}

/// Kills `server` with its calls in flight: connections cut, not drained.
async fn kill(server: Server) {
    for c in server.connections() {
        c.abort();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn typed_idempotent_call_is_retried_across_a_server_restart_and_others_are_not() {
    let hits = Arc::new(AtomicUsize::new(0));
    let hanging = Store {
        hits: hits.clone(),
        hang: true,
    };
    let first = start_on("tcp://127.0.0.1:0", KvHandler::new(hanging)).await;
    let url = first.local_url().to_string();
    let endpoint = Endpoint::builder().build();
    let kv = KvClient::new(endpoint.reconnecting(url.as_str(), backoff()).expect("url"))
        .with_options(CallOptions::new().timeout(Duration::from_secs(10)));

    let (k1, k2) = (kv.clone(), kv.clone());
    let put = tokio::spawn(async move { k1.put("p".into()).await });
    let get = tokio::spawn(async move { k2.get("g".into()).await });
    until("both calls reach the server", || {
        hits.load(Ordering::SeqCst) >= 2
    })
    .await;

    kill(first).await;
    let healthy_hits = Arc::new(AtomicUsize::new(0));
    let healthy = Store {
        hits: healthy_hits.clone(),
        hang: false,
    };
    let second = start_on(&url, KvHandler::new(healthy)).await;

    let put = bounded("put", put).await.expect("join");
    assert!(
        matches!(put, Err(CallError::ConnectionLost { .. })),
        "put is not idempotent, so not retried: {put:?}"
    );
    let get = bounded("get", get).await.expect("join");
    assert_eq!(get.expect("get is retried on the new link"), "g");
    assert_eq!(
        healthy_hits.load(Ordering::SeqCst),
        1,
        "only the idempotent call ran again"
    );
    second.shutdown().await;
}

#[tokio::test]
async fn proto_idempotency_level_is_retried_across_a_server_restart() {
    let hits = Arc::new(AtomicUsize::new(0));
    let hanging = Store {
        hits: hits.clone(),
        hang: true,
    };
    let first = start_on("tcp://127.0.0.1:0", ArchiveHandler::new(hanging)).await;
    let url = first.local_url().to_string();
    let endpoint = Endpoint::builder().build();
    let archive = ArchiveClient::new(endpoint.reconnecting(url.as_str(), backoff()).expect("url"))
        .with_options(CallOptions::new().timeout(Duration::from_secs(10)));
    assert!(ArchiveClient::DESCRIPTOR.methods[0].idempotent);

    let (a1, a2) = (archive.clone(), archive.clone());
    // `Keep` says `idempotency_level = IDEMPOTENT`; `Describe` says nothing.
    let keep = tokio::spawn(async move {
        a1.keep(Record {
            id: "r1".into(),
            ..Record::default()
        })
        .await
    });
    let describe = tokio::spawn(async move { a2.describe().await });
    until("both calls reach the server", || {
        hits.load(Ordering::SeqCst) >= 2
    })
    .await;

    kill(first).await;
    let healthy = Store {
        hits: Arc::new(AtomicUsize::new(0)),
        hang: false,
    };
    let second = start_on(&url, ArchiveHandler::new(healthy)).await;

    let kept = bounded("keep", keep).await.expect("join");
    assert_eq!(kept.expect("keep is retried on the new link").id, "r1");
    let described = bounded("describe", describe).await.expect("join");
    assert!(
        matches!(described, Err(CallError::ConnectionLost { .. })),
        "describe is not idempotent: {described:?}"
    );
    second.shutdown().await;
}
