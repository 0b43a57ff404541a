use plexus::Reject;

#[plexus::service]
pub trait Chat {
    #[one_way]
    async fn typing(&self, user: String);
    #[oneway]
    async fn left(&self, user: String);
    #[retry(3)]
    async fn post(&self, text: String) -> Result<(), Reject>;
}

fn main() {}
