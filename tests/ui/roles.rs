use plexus::Reject;

#[plexus::service(roles = ["member"])]
pub trait Chat {
    #[role("host")]
    async fn kick(&self, user: String) -> Result<(), Reject>;
    #[role(host)]
    async fn ban(&self, user: String) -> Result<(), Reject>;
    #[role("member")]
    #[role("member")]
    async fn leave(&self, user: String) -> Result<(), Reject>;
}

fn main() {}
