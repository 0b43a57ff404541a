use plexus::Reject;

#[plexus::service]
pub trait Chat<T>: Send {
    const LIMIT: usize;
    async fn connect(&self) -> Result<(), Reject>;
    async fn post(&self, text: String) -> Result<(), Reject> {
        Ok(())
    }
}

fn main() {}
