use plexus::Reject;

#[plexus::service]
pub trait Chat {
    async fn post(&self, text: &str) -> Result<(), Reject>;
    async fn find(&self, ids: Vec<&'static u8>) -> Result<Vec<u8>, Reject>;
}

fn main() {}
