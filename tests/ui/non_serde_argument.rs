use plexus::Reject;

pub struct Secret(u64);

#[plexus::service]
pub trait Vault {
    async fn store(&self, secret: Secret) -> Result<(), Reject>;
}

fn main() {}
