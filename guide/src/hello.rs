//! A contract written as a Rust trait.

use plexus::Reject;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Greeting {
    pub text: String,
}

#[plexus::service(package = "hello")]
pub trait Hello {
    /// Greets `name`; an empty name is rejected.
    async fn greet(&self, name: String) -> Result<Greeting, Reject>;
}

pub struct Host;

impl Hello for Host {
    async fn greet(&self, name: String) -> Result<Greeting, Reject> {
        if name.is_empty() {
            return Err(Reject::new(400, "greet whom?"));
        }
        Ok(Greeting {
            text: format!("Hello, {name}!"),
        })
    }
}
