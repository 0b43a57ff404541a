use plexus::Reject;

#[plexus::service]
pub trait Clock {
    async fn now(self) -> Result<u64, Reject>;
}

fn main() {}
