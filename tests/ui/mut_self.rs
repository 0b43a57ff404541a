use plexus::Reject;

#[plexus::service]
pub trait Counter {
    async fn bump(&mut self) -> Result<u64, Reject>;
}

fn main() {}
