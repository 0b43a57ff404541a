mod greeter;
mod hello;

use greeter::{GreeterClient, GreeterHandler, HelloRequest};
use hello::{HelloClient, HelloHandler};
use plexus::{CallError, Server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One server, both contracts.
    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(HelloHandler::new(hello::Host))
        .serve(GreeterHandler::new(greeter::Desk))
        .start()
        .await?;
    let url = server.local_url();
    println!("serving on {url}");

    let hello = HelloClient::connect(url).await?;
    println!("{}", hello.greet("Ada".into()).await?.text);
    match hello.greet(String::new()).await {
        Err(CallError::Rejected(reject)) => println!("rejected: {}", reject.message()),
        other => println!("unexpected: {other:?}"),
    }

    let greeter = GreeterClient::connect(url).await?;
    let request = HelloRequest {
        name: "Grace".into(),
    };
    println!("{}", greeter.say_hello(request).await?.message);

    server.shutdown().await;
    Ok(())
}
