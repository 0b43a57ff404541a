//! The resilience benchmark (`plexus-bench --resilience`): each attack of the
//! hardening issue (#10) played against a Plexus server in a separate
//! process, with the server's resident-memory growth, what became of the
//! attacker (held back, cut off after how long and why, refused), and
//! whether a well-behaved connection was served throughout.
//!
//! Every row starts a fresh victim process (this binary again, with
//! `--serve-victim`), so no attack inherits another's freed memory; the
//! attacker and the well-behaved client run here, on a tokio runtime of
//! this process. It measures and reports; it asserts nothing (the same
//! attacks are tests in `tests/tests/hostile_peers.rs`).

mod attacks;
mod peer;
mod process;
mod steady;
pub mod victim;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use plexus::patterns::Overflow;

use self::attacks::Attack;
use self::process::Victim;
use self::steady::{Served, Steady};
use self::victim::Tuning;
use crate::{report, BoxError};

/// The command that reproduces a full run.
const COMMAND: &str = "cargo run --release -p plexus-bench -- --resilience";
/// How long the well-behaved client calls before the attack begins.
const WARM_UP: Duration = Duration::from_millis(300);
/// How long after the attack the victim's memory is read again.
const SETTLE: Duration = Duration::from_millis(500);
/// The longest one row may take, set-up and tear-down included.
const ROW_LIMIT: Duration = Duration::from_secs(180);
/// The shorter stall timeout some rows are measured with besides the default.
const SHORT_STALL: Duration = Duration::from_secs(2);
/// The shorter handshake timeout the silent dialers are measured with besides
/// the default.
const SHORT_HANDSHAKE: Duration = Duration::from_secs(1);

/// What to run and where to write it.
pub struct Options {
    /// Only the attacks with these ids (nothing is written then).
    pub attacks: Vec<String>,
    /// Where the section goes (`None`: nowhere).
    pub out: Option<PathBuf>,
}

/// One row: an attack against a victim with one tuning.
#[derive(Clone, Copy)]
struct Case {
    attack: Attack,
    tuning: Tuning,
}

/// Every row of a full run: each attack with the defaults, and the ones a
/// timeout decides again with a shorter one.
fn plan() -> Vec<Case> {
    let short_stall = Tuning {
        stall: Some(SHORT_STALL),
        ..Tuning::DEFAULTS
    };
    let short_handshake = Tuning {
        handshake: Some(SHORT_HANDSHAKE),
        ..Tuning::DEFAULTS
    };
    let case = |attack, tuning| Case { attack, tuning };
    let defaults = Tuning::DEFAULTS;
    vec![
        case(Attack::UnreadAnswers { body: 64 * 1024 }, defaults),
        case(Attack::UnreadAnswers { body: 64 * 1024 }, short_stall),
        case(Attack::UnreadAnswers { body: 4 * 1024 }, defaults),
        case(Attack::UnreadAnswers { body: 4 * 1024 }, short_stall),
        case(Attack::LargeCalls, defaults),
        case(Attack::ManyNames, defaults),
        case(Attack::LongNames, defaults),
        case(Attack::Connections, defaults),
        case(Attack::SilentDialers, defaults),
        case(Attack::SilentDialers, short_handshake),
        case(Attack::FrozenSubscriber(Overflow::DropOldest), defaults),
        case(Attack::FrozenSubscriber(Overflow::Block), defaults),
        case(Attack::OneWayFlood, defaults),
    ]
}

/// The ids `--attack` accepts.
pub fn attack_ids() -> Vec<&'static str> {
    let mut ids: Vec<&'static str> = plan().iter().map(|c| c.attack.id()).collect();
    ids.dedup();
    ids
}

/// What one row measured.
struct Row {
    case: Case,
    /// Peak RSS above the baseline, and RSS after the attack minus it.
    growth: u64,
    after: i64,
    /// The most any connection held against its budget, and whether one was
    /// held back.
    budget_peak: usize,
    held_back: bool,
    outcome: String,
    served: Served,
    /// When the attack began.
    began: Option<Instant>,
}

/// Runs the benchmark: every row of [`plan`], or those `options` selects.
pub fn run(options: Options) -> Result<(), BoxError> {
    let cases: Vec<Case> = plan()
        .into_iter()
        .filter(|c| {
            options.attacks.is_empty() || options.attacks.iter().any(|a| a == c.attack.id())
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("attacker")
        .enable_all()
        .build()?;
    println!(
        "plexus-bench resilience: {} rows, each against a fresh victim process",
        cases.len()
    );
    let mut rows = Vec::with_capacity(cases.len());
    for case in cases {
        println!("- {} ({})", case.attack.describe(), case.tuning.label());
        let row = runtime.block_on(async {
            tokio::time::timeout(ROW_LIMIT, measure(case))
                .await
                .map_err(|_| BoxError::from(format!("the row ran past {ROW_LIMIT:?}")))?
        })?;
        println!(
            "  RSS +{:.1} MiB peak, {}; well-behaved: {}",
            mib(row.growth as f64),
            row.outcome,
            served(&row.served, row.began)
        );
        rows.push(row);
    }
    let section = section(&rows);
    println!("\n{section}");
    if options.attacks.is_empty() {
        if let Some(path) = options.out {
            report::write_section(&path, "resilience", &section)?;
            println!("written to {}", path.display());
        }
    }
    Ok(())
}

/// One row: a fresh victim, the well-behaved client, the attack, the figures.
async fn measure(case: Case) -> Result<Row, BoxError> {
    let mut victim = Victim::start(case.tuning).await?;
    let steady = Steady::start(&victim.url).await?;
    tokio::time::sleep(WARM_UP).await;
    let outcome = match case.attack.run(&mut victim, case.tuning).await {
        Ok(outcome) => outcome,
        Err(e) => format!("**the attack failed**: {e}"),
    };
    let (growth, _) = victim.rss_growth()?;
    tokio::time::sleep(SETTLE).await;
    let stats = victim.stats().await?;
    let (growth_at_end, after) = victim.rss_growth()?;
    let served = steady.finish().await?;
    let victim_began = victim.began();
    victim.stop().await?;
    Ok(Row {
        case,
        growth: growth.max(growth_at_end),
        after,
        budget_peak: stats.budget_peak,
        held_back: stats.held_back,
        outcome,
        served,
        began: victim_began,
    })
}

/// A duration as the table gives it: milliseconds below a second, else
/// seconds to a tenth.
pub(crate) fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// What the well-behaved client saw; when its slowest call began is given
/// from the start of the attack.
fn served(s: &Served, began: Option<Instant>) -> String {
    let mut out = format!(
        "{} calls, {} failed, slowest {:.1} ms",
        s.calls,
        s.failures,
        s.slowest.as_secs_f64() * 1e3
    );
    if let (Some(at), Some(began)) = (s.slowest_at, began) {
        let offset = if at >= began {
            secs(at - began)
        } else {
            format!("-{}", secs(began - at))
        };
        let _ = write!(out, " (at {offset})");
    }
    if let Some(why) = &s.first_failure {
        let _ = write!(out, " (first failure: {why})");
    }
    out
}

/// The section for `BENCHMARKS.md`: command, machine, method and the table.
fn section(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### resilience run\n");
    let _ = writeln!(out, "Reproduce: `{COMMAND}`\n");
    let _ = writeln!(out, "- Machine: {}", report::machine());
    let _ = writeln!(
        out,
        "- Victim: a Plexus server in a process of its own (this binary with `--serve-victim`), a fresh one per row, on tokio's multi-thread runtime with its default worker count; every setting at its default unless the settings column says otherwise (16 MiB memory budget, 256 calls at once, 10 s stall timeout, 10 s handshake timeout, 4096 connections, 128 handshakes, publisher send timeout 5 s)"
    );
    let _ = writeln!(
        out,
        "- RSS: the victim's `VmRSS` from `/proc/<pid>/status`, read every 2 ms by the attacking process; growth is the peak minus the baseline taken just before the attack (victim listening, well-behaved client connected and calling); \"after\" is {} ms after the attack ended. Kernel socket buffers are not in it",
        SETTLE.as_millis()
    );
    let _ = writeln!(
        out,
        "- Budget: the most any one of the victim's connections held against its memory budget (`ConnectionStats::budget_used`, sampled every 5 ms, every 100 ms above 256 connections), and whether the victim held a peer back"
    );
    let _ = writeln!(
        out,
        "- Well-behaved client: one Plexus connection opened before the attack, an echo call every 20 ms (10 s timeout each) until the attack ended; its slowest call is given with when it began, counted from the start of the attack"
    );
    let _ = writeln!(out);
    out.push_str(
        "| attack | settings | server RSS growth, peak (after) | budget used, peak | what became of the attacker | well-behaved connection |\n",
    );
    out.push_str("|---|---|--:|--:|---|---|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} MiB ({:+.1}) | {:.1} MiB{} | {} | {} |",
            row.case.attack.describe(),
            row.case.tuning.label(),
            mib(row.growth as f64),
            mib(row.after as f64),
            mib(row.budget_peak as f64),
            if row.held_back { ", held back" } else { "" },
            row.outcome.replace('|', "\\|"),
            served(&row.served, row.began).replace('|', "\\|"),
        );
    }
    out
}
