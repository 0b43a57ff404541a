//! The static backend through the public API: a fixed list of URLs becomes
//! one `Endpoint` event each.

use std::time::Duration;

use plexus::discovery::{Announcement, Discovery, DiscoveryError, DiscoveryEvent, Static};
use plexus::NodeId;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(5);

#[tokio::test]
async fn reports_each_configured_endpoint_then_ends_on_leave() {
    let urls = ["tcp://127.0.0.1:4000", "unix:///tmp/plexus-peer.sock"];
    let backend = Static::new(urls);
    let mut events = backend
        .start(Announcement::new(NodeId(1), "alice"))
        .await
        .expect("starts");
    for url in urls {
        let event = timeout(BOUND, events.recv()).await.expect("bounded");
        assert_eq!(event, Some(DiscoveryEvent::Endpoint(url.to_owned())));
        assert_eq!(event.and_then(|e| e.node_id()), None);
    }
    backend
        .update(Announcement::new(NodeId(1), "alice").group("lab-4"))
        .await
        .expect("update is accepted");
    backend.leave().await.expect("leave");
    let ended = timeout(BOUND, events.recv()).await.expect("bounded");
    assert_eq!(ended, None);
    assert_eq!(backend.stats().received, 0);
}

#[tokio::test]
async fn an_invalid_url_is_refused_at_start() {
    let backend = Static::new(["tcp://127.0.0.1:4000", "carrier-pigeon://coop"]);
    match backend.start(Announcement::new(NodeId(1), "alice")).await {
        Err(DiscoveryError::InvalidEndpoint { url, .. }) => {
            assert_eq!(url, "carrier-pigeon://coop")
        }
        other => panic!("expected InvalidEndpoint, got {other:?}"),
    }
}
