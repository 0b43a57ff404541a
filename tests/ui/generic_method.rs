use plexus::Reject;

#[plexus::service]
pub trait Store {
    async fn put<T: serde::Serialize>(&self, value: T) -> Result<(), Reject>;
}

fn main() {}
