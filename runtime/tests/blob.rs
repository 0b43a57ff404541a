//! `plexus::codec::Blob` through the public API: a MessagePack decode shares
//! the payload's memory, other codecs copy, the wire form is MessagePack
//! `bin`, a kept blob outlives its frame, what a kept blob pins and how
//! `detach` lets go of it, and blobs in `#[plexus::service]` contracts over
//! a real connection.

use std::time::Duration;

use futures_util::StreamExt;
use plexus::codec::{Blob, Codec, Json, MsgPack};
use plexus::{BoxStream, Bytes, Reject, Server};
use serde::{Deserialize, Serialize};

/// Every network step is bounded: a hang fails the test instead of the run.
const BOUND: Duration = Duration::from_secs(30);

fn inside(payload: &Bytes, blob: &Blob) -> bool {
    !blob.is_empty() && payload.as_ptr_range().contains(&blob.as_ptr())
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Upload {
    name: String,
    body: Blob,
}

#[test]
fn a_msgpack_decode_shares_the_payload_instead_of_copying() {
    for len in [1, 64, 300, 70_000, 4 << 20] {
        let sent = Blob::from(vec![0xa5; len]);
        let payload = <MsgPack as Codec<Blob>>::encode(&sent).unwrap();
        let got = <MsgPack as Codec<Blob>>::decode(payload.clone()).unwrap();
        assert_eq!(got, sent, "{len} bytes");
        assert!(inside(&payload, &got), "{len} bytes were copied");
    }
    // Inside a struct too.
    let upload = Upload {
        name: "a.bin".into(),
        body: Blob::from(vec![9; 5000]),
    };
    let payload = <MsgPack as Codec<Upload>>::encode(&upload).unwrap();
    let got = <MsgPack as Codec<Upload>>::decode(payload.clone()).unwrap();
    assert_eq!(got, upload);
    assert!(inside(&payload, &got.body));
}

#[test]
fn json_and_codecs_that_lend_nothing_copy() {
    let sent = Blob::from(vec![7; 1000]);
    let payload = <Json as Codec<Blob>>::encode(&sent).unwrap();
    let got = <Json as Codec<Blob>>::decode(payload.clone()).unwrap();
    assert_eq!(got, sent);
    assert!(!inside(&payload, &got));
    // A serde decoder used directly, without `decode_sharing`: a copy.
    let payload = Bytes::from(rmp_serde::to_vec(&sent).unwrap());
    let got: Blob = rmp_serde::from_slice(&payload).unwrap();
    assert_eq!(got, sent);
    assert!(!inside(&payload, &got));
}

#[test]
fn a_blob_is_messagepack_bin_on_the_wire() {
    let encode = |len: usize| <MsgPack as Codec<Blob>>::encode(&Blob::from(vec![1; len])).unwrap();
    assert_eq!(&encode(0)[..], [0xc4, 0]);
    assert_eq!(&encode(3)[..], [0xc4, 3, 1, 1, 1]);
    assert_eq!(&encode(300)[..3], [0xc5, 0x01, 0x2c]);
    assert_eq!(&encode(70_000)[..5], [0xc6, 0, 1, 0x11, 0x70]);
    // What `serde_bytes`/other languages' `bin` decoders read, a blob reads.
    let from_bin: Blob =
        <MsgPack as Codec<Blob>>::decode(Bytes::from_static(&[0xc4, 2, 8, 9])).unwrap();
    assert_eq!(from_bin, [8u8, 9]);
}

#[test]
fn empty_blobs_round_trip_and_share_nothing() {
    let payload = Bytes::from(vec![0xc4, 0]);
    let got = <MsgPack as Codec<Blob>>::decode(payload.clone()).unwrap();
    assert!(got.is_empty());
    // Only our own handle is left: the empty blob holds none.
    assert!(payload.is_unique());
    let got = <Json as Codec<Blob>>::decode(<Json as Codec<Blob>>::encode(&got).unwrap()).unwrap();
    assert!(got.is_empty());
}

#[test]
fn a_kept_blob_stays_valid_after_the_rest_of_the_frame_is_dropped() {
    let upload = Upload {
        name: "kept".into(),
        body: Blob::from((0..=255u8).cycle().take(100_000).collect::<Vec<_>>()),
    };
    let payload = <MsgPack as Codec<Upload>>::encode(&upload).unwrap();
    let Upload { name, body } = <MsgPack as Codec<Upload>>::decode(payload).unwrap();
    drop(name);
    // The payload handle is gone; the blob keeps the memory it points into.
    assert_eq!(body, upload.body);
    let tail = body.slice(99_000..);
    drop(body);
    assert_eq!(tail, upload.body[99_000..]);
}

#[test]
fn a_kept_blob_pins_its_payload_until_detached() {
    // A tiny blob at the end of a large payload, as a small message read in
    // the same chunk as a large one.
    #[derive(Serialize, Deserialize)]
    struct Pair {
        large: Blob,
        tiny: Blob,
    }
    let pair = Pair {
        large: Blob::from(vec![0; 1 << 20]),
        tiny: Blob::from_static(b"id-42"),
    };
    let payload = Bytes::from(rmp_serde::to_vec_named(&pair).unwrap());
    let Pair { large, tiny } = <MsgPack as Codec<Pair>>::decode(payload.clone()).unwrap();
    drop(large);
    // The documented trade-off: the 5-byte blob keeps the 1 MiB payload.
    assert!(inside(&payload, &tiny));
    assert!(!payload.is_unique());
    // Detached, it owns exactly its bytes and keeps nothing else alive.
    let kept = tiny.detach();
    drop(tiny);
    assert_eq!(kept, b"id-42");
    assert!(!inside(&payload, &kept));
    assert!(payload.is_unique());
}

#[test]
fn conversions_keep_the_bytes() {
    let from_vec = Blob::from(vec![1, 2, 3]);
    let from_static = Blob::from(&b"\x01\x02\x03"[..]);
    let from_bytes = Blob::from(Bytes::from_static(&[1, 2, 3]));
    assert_eq!(from_vec, from_static);
    assert_eq!(from_static, from_bytes);
    assert_eq!(Vec::<u8>::from(from_vec), vec![1, 2, 3]);
    assert_eq!(
        Bytes::from(from_bytes.clone()),
        Bytes::from_static(&[1, 2, 3])
    );
    // Into `Bytes` and a clone share memory: a reference count, no copy.
    assert_eq!(
        from_bytes.clone().into_bytes().as_ptr(),
        from_bytes.as_ptr()
    );
    assert_eq!(Blob::from("ab"), Blob::from(String::from("ab")));
}

/// A contract carrying blobs, as a user writes it.
#[plexus::service(package = "blobtest", version = 1)]
trait Store {
    async fn echo(&self, body: Blob) -> Result<Blob, Reject>;
    async fn upload(&self, upload: Upload) -> Result<u64, Reject>;
    async fn download(&self, messages: u32, size: u32) -> Result<BoxStream<Blob>, Reject>;
}

struct Stored;

impl Store for Stored {
    async fn echo(&self, body: Blob) -> Result<Blob, Reject> {
        Ok(body)
    }

    async fn upload(&self, upload: Upload) -> Result<u64, Reject> {
        Ok(upload.body.iter().map(|&b| u64::from(b)).sum())
    }

    async fn download(&self, messages: u32, size: u32) -> Result<BoxStream<Blob>, Reject> {
        let chunk = Blob::from(vec![0x5a; size as usize]);
        Ok(futures_util::stream::iter(0..messages)
            .map(move |_| chunk.clone())
            .boxed())
    }
}

/// The same contract under JSON.
#[plexus::service(package = "blobtest_json", version = 1, codec = plexus::codec::Json)]
trait JsonStore {
    async fn echo(&self, body: Blob) -> Result<Blob, Reject>;
}

struct JsonStored;

impl JsonStore for JsonStored {
    async fn echo(&self, body: Blob) -> Result<Blob, Reject> {
        Ok(body)
    }
}

#[tokio::test]
async fn blobs_travel_in_a_contract_over_a_connection() {
    let run = async {
        let server = Server::bind("tcp://127.0.0.1:0")
            .serve(StoreHandler::new(Stored))
            .serve(JsonStoreHandler::new(JsonStored))
            .start()
            .await
            .unwrap();
        let url = server.local_url().to_string();
        let store = StoreClient::connect(url.clone()).await.unwrap();
        let json = JsonStoreClient::connect(url).await.unwrap();

        for len in [0, 1, 64, 65_536, 3 << 20] {
            let body = Blob::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
            assert_eq!(store.echo(body.clone()).await.unwrap(), body, "{len} bytes");
        }
        let small = Blob::from_static(b"json too");
        assert_eq!(json.echo(small.clone()).await.unwrap(), small);

        let upload = Upload {
            name: "u".into(),
            body: Blob::from(vec![2; 10_000]),
        };
        assert_eq!(store.upload(upload).await.unwrap(), 20_000);

        let mut chunks = store.download(64, 64 * 1024).await.unwrap();
        let mut received = Vec::new();
        while let Some(chunk) = chunks.next().await {
            received.push(chunk.unwrap());
        }
        assert_eq!(received.len(), 64);
        assert!(received
            .iter()
            .all(|c| c.len() == 64 * 1024 && c.iter().all(|&b| b == 0x5a)));
    };
    tokio::time::timeout(BOUND, run)
        .await
        .expect("within the bound");
}
