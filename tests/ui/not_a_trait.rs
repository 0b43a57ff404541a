#[plexus::service]
pub struct Chat;

fn main() {}
