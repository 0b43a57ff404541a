#[plexus::service]
pub trait Chat {
    async fn typing(&self, user: String);
    async fn post(&self, text: String) -> String;
}

fn main() {}
