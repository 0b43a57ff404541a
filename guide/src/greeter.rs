//! A contract written in `proto/greeter.proto`, compiled by `build.rs`.

use plexus::{CallContext, Reject};

plexus::include_proto!("greeter");

pub struct Desk;

impl Greeter for Desk {
    async fn say_hello(
        &self,
        _ctx: CallContext,
        request: HelloRequest,
    ) -> Result<HelloReply, Reject> {
        Ok(HelloReply {
            message: format!("Hello, {}!", request.name),
        })
    }
}
