use plexus::Reject;

#[plexus::service]
pub trait Chat {
    #[oneway]
    async fn typing(&self, user: String) -> Result<(), Reject>;
}

fn main() {}
