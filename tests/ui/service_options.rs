use plexus::Reject;

#[plexus::service(package = "chat rooms", version = 0, transport = "tcp")]
pub trait Chat {
    async fn post(&self, text: String) -> Result<(), Reject>;
}

fn main() {}
