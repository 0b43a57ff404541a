use plexus::Reject;

pub struct Secret(u64);
pub struct Opaque;

// One error per message type that is not serde, at the type as first
// written: not one per generated use (client, handler, fanout), nor one per
// missing serde trait. Several arguments travel as one tuple, a message type
// of its own.
#[plexus::service]
pub trait Vault {
    async fn store(&self, secret: Secret) -> Result<(), Reject>;
    async fn replace(&self, old: Secret, new_secret: Secret) -> Result<(), Reject>;
    async fn fetch(&self, id: u64) -> Result<Secret, Reject>;
    async fn peek(&self) -> Result<Opaque, Reject>;
}

fn main() {}
