//! `plexus call`: one call of any kind, JSON in and out.
//!
//! Unary and client-stream replies print as one JSON line; server-stream and
//! bidi replies print one line per item as they arrive. Client and bidi
//! streams send each further argument as one item, or, without any, one
//! item per line of standard input.

use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use plexus::reflection;
use plexus::{stream::Inbound, CallError, CallOptions, Connection};
use tokio::io::AsyncBufReadExt;

use crate::error::CliError;
use crate::payload::Plan;
use crate::{print_line, target, Global};

/// `plexus call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// A URL (`tcp://127.0.0.1:4000`) or a node name.
    pub target: String,
    /// The operation: `package.Service/method`.
    pub op: String,
    /// The request as JSON (stream kinds: one item per argument, or JSON
    /// lines on stdin when none is given). For an operation without a
    /// contract, plain text.
    #[arg(value_name = "JSON")]
    pub request: Vec<String>,
    /// Metadata sent with the call, `key:value` (repeat for several).
    #[arg(short = 'H', long = "header", value_name = "KEY:VALUE")]
    pub headers: Vec<String>,
    /// Open the session NAME with DATA first and call inside it.
    #[arg(long, num_args = 2, value_names = ["NAME", "DATA"])]
    pub session: Vec<String>,
    /// Codec to assume when the server does not serve reflection
    /// (`msgpack`, `json`, `raw`).
    #[arg(long, value_name = "CODEC")]
    pub codec: Option<String>,
    /// Call kind to assume when the server does not serve reflection.
    #[arg(long, value_name = "KIND", default_value = "unary")]
    pub kind: String,
    /// Print replies indented.
    #[arg(long)]
    pub pretty: bool,
}

/// Metadata from `-H key:value`.
pub fn call_options(global: &Global, headers: &[String]) -> Result<CallOptions, CliError> {
    let mut opts = CallOptions::new();
    if let Some(t) = global.timeout {
        opts = opts.timeout(t);
    }
    for header in headers {
        let (key, value) = header.split_once(':').ok_or_else(|| {
            CliError::usage(format!(
                "-H {header}: metadata is `key:value`, e.g. -H trace-id:abc"
            ))
        })?;
        opts = opts.metadata(key.trim(), value.trim_start().to_owned());
    }
    Ok(opts)
}

/// The plan for `op` on `conn`: from reflection, or blind with `--codec`.
pub async fn plan(
    global: &Global,
    conn: &Connection,
    op: &str,
    codec: Option<&str>,
    kind: &str,
) -> Result<Plan, CliError> {
    if !op.contains('/') {
        return Err(CliError::usage(format!(
            "`{op}` is not an operation id; they look like package.Service/method\n  try: `plexus describe <target>` lists them"
        )));
    }
    let opts = CallOptions::new().timeout(global.timeout.unwrap_or(Duration::from_secs(10)));
    match reflection::describe(conn, None, opts).await {
        Ok(description) => {
            let plan = Plan::from_reflection(&description, op)?;
            match codec {
                Some(codec) => Plan::blind(&plan.op, &plan.kind, codec),
                None => Ok(plan),
            }
        }
        Err(CallError::NoSuchOperation { .. }) => match codec {
            Some(codec) => Plan::blind(op, kind, codec),
            None => Err(CliError::usage(format!(
                "the target does not serve reflection, so the payload format of {op} is unknown\n  try: --codec msgpack|json|raw (and --kind for streams)"
            ))),
        },
        Err(e) => Err(CliError::call(reflection::DESCRIBE_OP, e, None)),
    }
}

/// `plexus call`.
pub async fn run(global: &Global, args: CallArgs) -> Result<(), CliError> {
    let connected = target::connect(global, &args.target).await?;
    let conn = connected.conn.clone();
    let result = call(global, &args, &conn).await;
    conn.close().await;
    result
}

async fn call(global: &Global, args: &CallArgs, conn: &Connection) -> Result<(), CliError> {
    let plan = plan(global, conn, &args.op, args.codec.as_deref(), &args.kind).await?;
    let opts = call_options(global, &args.headers)?;
    let scope = match args.session.as_slice() {
        [name, data] => {
            let settle = global.timeout.unwrap_or(Duration::from_secs(5));
            let session = conn
                .open_session(name, data.clone().into_bytes(), settle)
                .await
                .map_err(|e| match e {
                    CallError::Rejected(r) => CliError::Rejected(format!(
                        "the target refused session `{name}` with code {}: {}",
                        r.code(),
                        r.message()
                    )),
                    other => CliError::Call(format!("opening session `{name}`: {other}")),
                })?;
            Some(session)
        }
        _ => None,
    };
    let conn = match &scope {
        Some(session) => session.as_connection(),
        None => conn.clone(),
    };
    let print = |value: serde_json::Value| {
        let text = if args.pretty {
            serde_json::to_string_pretty(&value)
        } else {
            serde_json::to_string(&value)
        };
        print_line(&text.unwrap_or_default());
    };
    let failed = |e: CallError| CliError::call(&plan.op, e, Some(&plan.shape));
    let single = || -> Result<bytes::Bytes, CliError> {
        match args.request.as_slice() {
            [] => plan.encode(""),
            [one] => plan.encode(one),
            _ => Err(CliError::usage(format!(
                "{} is a {} operation and takes one argument, got {}",
                plan.op,
                plan.kind,
                args.request.len()
            ))),
        }
    };
    let outcome = match plan.kind.as_str() {
        "unary" => {
            let reply = conn.call(&plan.op, single()?, opts).await.map_err(failed)?;
            print(plan.decode(&reply)?);
            Ok(())
        }
        "oneway" => conn.oneway(&plan.op, single()?, opts).await.map_err(failed),
        "server_stream" => {
            let inbound = conn
                .server_stream(&plan.op, single()?, opts)
                .await
                .map_err(failed)?;
            print_stream(&plan, inbound, print).await
        }
        "client_stream" => {
            let (mut out, reply) = conn.client_stream(&plan.op, opts).await.map_err(failed)?;
            send_items(&plan, &args.request, &mut out).await?;
            out.finish().await.map_err(failed)?;
            let reply = reply.await.map_err(failed)?;
            print(plan.decode(&reply)?);
            Ok(())
        }
        "bidi" => {
            let (mut out, inbound) = conn.bidi(&plan.op, opts).await.map_err(failed)?;
            let sending = async {
                send_items(&plan, &args.request, &mut out).await?;
                out.finish().await.map_err(failed)
            };
            let (sent, printed) = tokio::join!(sending, print_stream(&plan, inbound, print));
            sent.and(printed)
        }
        other => Err(CliError::usage(format!("unknown call kind `{other}`"))),
    };
    if let Some(session) = scope {
        session.close("plexus call is done").await;
    }
    outcome
}

async fn print_stream(
    plan: &Plan,
    mut inbound: Inbound,
    print: impl Fn(serde_json::Value),
) -> Result<(), CliError> {
    while let Some(item) = inbound.next().await {
        let bytes = item.map_err(|e| CliError::call(&plan.op, e, Some(&plan.shape)))?;
        print(plan.decode(&bytes)?);
    }
    Ok(())
}

/// Sends `items`, or one item per non-empty line of stdin when there are none.
async fn send_items(
    plan: &Plan,
    items: &[String],
    out: &mut plexus::stream::Outbound,
) -> Result<(), CliError> {
    let failed = |e: CallError| CliError::call(&plan.op, e, Some(&plan.shape));
    if !items.is_empty() {
        for item in items {
            out.send(plan.encode(item)?).await.map_err(failed)?;
        }
        return Ok(());
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| CliError::usage(format!("reading stdin: {e}")))?;
        let Some(line) = line else {
            return Ok(());
        };
        if line.trim().is_empty() {
            continue;
        }
        out.send(plan.encode(&line)?).await.map_err(failed)?;
    }
}
