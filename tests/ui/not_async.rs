use plexus::Reject;

#[plexus::service]
pub trait Clock {
    fn now(&self) -> Result<u64, Reject>;
}

fn main() {}
