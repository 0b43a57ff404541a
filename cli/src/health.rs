//! `plexus health`: probe `plexus.Health/check` (or follow `/watch`), for
//! load balancers, orchestrators and scripts: exit 0 only when `SERVING`.

use std::time::Duration;

use clap::Args;
use plexus::health::{self, ServingStatus};
use plexus::{CallError, CallOptions};

use crate::error::CliError;
use crate::{print_line, target, Global};

/// `plexus health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// A URL (`tcp://127.0.0.1:4000`) or a node name.
    pub target: String,
    /// The service (`package.Service`); the endpoint as a whole without one.
    pub service: Option<String>,
    /// Print every status change until the server ends the stream; exit
    /// with the code of the last status.
    #[arg(long)]
    pub watch: bool,
}

/// The exit the status gives.
fn verdict(target: &str, service: &str, status: ServingStatus) -> Result<(), CliError> {
    if status == ServingStatus::Serving {
        return Ok(());
    }
    let what = if service.is_empty() {
        target.to_owned()
    } else {
        format!("{service} on {target}")
    };
    Err(CliError::NotServing(format!("{what} is {status}")))
}

fn print_status(global: &Global, service: &str, status: ServingStatus) {
    if global.json {
        print_line(&serde_json::json!({ "service": service, "status": status }).to_string());
    } else {
        print_line(status.as_str());
    }
}

/// `plexus health`.
pub async fn run(global: &Global, args: HealthArgs) -> Result<(), CliError> {
    let service = args.service.clone().unwrap_or_default();
    let connected = match target::connect(global, &args.target).await {
        Ok(c) => c,
        Err(e) => return Err(draining_or(e, &args.target)),
    };
    let conn = connected.conn.clone();
    let label = connected.label.clone();
    let not_served = |e: CallError| match e {
        CallError::Closing { .. } => {
            CliError::NotServing(format!("{label} is draining: NOT_SERVING"))
        }
        CallError::NoSuchOperation { .. } => CliError::Call(format!(
            "{label} does not serve health (it was built without_health())"
        )),
        CallError::Rejected(r) if r.code() == health::UNKNOWN_SERVICE => {
            CliError::NotServing(format!("{}: SERVICE_UNKNOWN", r.message()))
        }
        other => CliError::call(health::CHECK_OP, other, None),
    };
    let outcome = if args.watch {
        let mut opts = CallOptions::new();
        if let Some(t) = global.timeout {
            opts = opts.timeout(t);
        }
        match health::watch(&conn, &service, opts).await {
            Err(e) => Err(not_served(e)),
            Ok(mut statuses) => {
                let mut last = None;
                loop {
                    match statuses.recv().await {
                        Some(Ok(status)) => {
                            print_status(global, &service, status);
                            last = Some(status);
                        }
                        Some(Err(e)) => break Err(not_served(e)),
                        None => {
                            break match last {
                                Some(status) => verdict(&label, &service, status),
                                None => Err(CliError::Call(format!(
                                    "{label} ended the watch without a status"
                                ))),
                            }
                        }
                    }
                }
            }
        }
    } else {
        let opts = CallOptions::new().timeout(global.timeout.unwrap_or(Duration::from_secs(5)));
        match health::check(&conn, &service, opts).await {
            Ok(status) => {
                print_status(global, &service, status);
                verdict(&label, &service, status)
            }
            Err(e) => Err(not_served(e)),
        }
    };
    conn.close().await;
    outcome
}

/// A server refusing connections because it shuts down is not serving;
/// every other connection failure stays one.
fn draining_or(error: CliError, target: &str) -> CliError {
    match error {
        CliError::Draining(_) => {
            CliError::NotServing(format!("{target} is shutting down: NOT_SERVING"))
        }
        other => other,
    }
}
