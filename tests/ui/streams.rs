use plexus::{Reject, Streaming};

#[plexus::service]
pub trait Upload {
    async fn put(&self, name: String, chunks: Streaming<Vec<u8>>) -> Result<u64, Reject>;
    #[oneway]
    async fn push(&self, chunks: Streaming<Vec<u8>>);
    async fn ctx_late(&self, name: String, ctx: plexus::CallContext) -> Result<(), Reject>;
}

fn main() {}
