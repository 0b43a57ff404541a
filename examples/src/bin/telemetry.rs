//! Publish/subscribe telemetry: sensors publish readings on topics, a
//! dashboard and an alarm panel subscribe with their own filters and
//! overflow policies. Nodes find each other on the loopback beacon.
//!
//! ```text
//! cargo run -p plexus-examples --bin telemetry
//! cargo run -p plexus-examples --bin telemetry -- --tls --key "our secret"
//! ```
//!
//! Two sensor nodes (`site-a`, `site-b`) publish the `telemetry.Readings`
//! topic. The dashboard follows every topic under `site-a/` and blocks
//! (nothing lost, sensors wait for it if it falls behind); the alarm panel
//! follows everything but keeps only the newest 8 readings when it is busy,
//! and says how many it dropped. Nothing leaves this host.

use std::time::Duration;

use plexus::discovery::Beacon;
use plexus::patterns::{Overflow, Publisher, Subscriber, TopicClient};
use plexus::Node;
use plexus_examples::NodeSecurity;

/// One sensor reading.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    /// Which sensor.
    pub sensor: String,
    /// Degrees Celsius.
    pub celsius: f32,
}

plexus::topic! {
    /// Readings, published on topics `<site>/<room>/<sensor>`.
    pub struct Readings in "telemetry" => Reading;
}

const GROUP: &str = "plant";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let security = NodeSecurity::from_env()?;
    let beacon = || Beacon::loopback().interval(Duration::from_millis(200));

    let mut sensors = Vec::new();
    for site in ["site-a", "site-b"] {
        let publisher = Publisher::<Readings>::new();
        let node = Node::builder(site)
            .group(GROUP)
            .discovery(beacon())
            .serve_as(publisher.clone(), "publisher");
        let node = security.apply(node, site)?.start().await?;
        sensors.push((site, node, publisher));
    }
    let watcher = Node::builder("watcher")
        .group(GROUP)
        .discovery(beacon())
        .uses_as::<Readings>("subscriber");
    let watcher = security.apply(watcher, "watcher")?.start().await?;
    let dashboard = Subscriber::<Readings>::builder()
        .filter("site-a/")
        .overflow(Overflow::Block)
        .follow(watcher.peers::<TopicClient<Readings>>());
    let alarms = Subscriber::<Readings>::builder()
        .overflow(Overflow::DropOldest)
        .capacity(8)
        .follow(watcher.peers::<TopicClient<Readings>>());
    println!("waiting for both sensors to be found...");
    tokio::time::timeout(Duration::from_secs(10), async {
        dashboard.wait_publishers(2).await;
        alarms.wait_publishers(2).await;
    })
    .await?;

    // Each site publishes 20 readings from two rooms.
    for i in 0..20u16 {
        for (site, _, publisher) in &sensors {
            for room in ["hall", "lab"] {
                let reading = Reading {
                    sensor: format!("{room}-t1"),
                    celsius: 19.0 + f32::from(i) * 0.1,
                };
                publisher
                    .publish(&format!("{site}/{room}/t1"), &reading)
                    .await?;
            }
        }
    }

    // The dashboard gets every site-a reading, in order: 2 rooms x 20.
    for _ in 0..40 {
        let r = tokio::time::timeout(Duration::from_secs(5), dashboard.recv())
            .await?
            .ok_or("dashboard closed")?;
        println!("dashboard  {:<18} {:>5.1} °C", r.topic, r.event.celsius);
    }
    // The alarm panel was not reading: it kept the newest 8 of 80.
    tokio::time::timeout(Duration::from_secs(5), async {
        while alarms.stats().arrived < 80 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    while let Some(r) = alarms.try_recv() {
        println!("alarms     {:<18} {:>5.1} °C", r.topic, r.event.celsius);
    }
    println!(
        "alarm panel: {} readings arrived, {} dropped (kept the newest)",
        alarms.stats().arrived,
        alarms.dropped()
    );

    drop((dashboard, alarms));
    watcher.stop().await?;
    for (_, node, _) in sensors {
        node.stop().await?;
    }
    Ok(())
}
