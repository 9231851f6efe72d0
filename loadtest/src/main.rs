//! `loadtest`: drives a real logrelay pipeline on loopback and measures it, side by side with
//! `nats-server` as the baseline.
//!
//! ```text
//! loadtest run --preset fanout-100 --baseline nats --json target/loadtest/fanout-100.json
//! loadtest run --quick --json target/loadtest-quick.json     # CI smoke run, < 60 s
//! loadtest run --scenario my.toml --json out.json
//! loadtest presets [NAME]                                      # list, or print one as TOML
//! loadtest run --preset cross-relay --json target/loadtest/cross-relay.json  # 2 relays, NATS
//! loadtest chaos --duration 30m --json target/loadtest/chaos.json  # the chaos soak
//! ```
//!
//! The relay and the agents run as child processes (this binary's hidden `serve-relay` and
//! `serve-agent` subcommands) so that their CPU and memory are measured apart; producers and
//! subscribers run in this process. `chaos` runs the production binaries instead, kills them
//! at random and puts a fault proxy between them ([`chaos`]). See `docs/benchmarks.md`.
#![forbid(unsafe_code)]

mod chaos;
mod chart;
mod children;
mod corpus;
mod nats;
mod otlp_sink;
mod pace;
mod procstat;
mod producer;
mod progress;
mod report;
mod run;
mod scenario;
mod scrape;
mod stats;
mod subscriber;
mod summary;
mod writer;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::scenario::{PRESETS, Scenario};

/// logrelay load-test harness.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a preset, a scenario file, or the quick CI smoke run.
    Run(RunArgs),
    /// Medians of several JSON reports, one Markdown table per scenario.
    Median {
        /// JSON reports written by `loadtest run`.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// The chaos soak: kills, network faults and session churn under kubelet-style logging;
    /// fails unless every line written is delivered once, in order, or reported in an exact
    /// gap, and the relay's and agent's RSS stay flat.
    Chaos(ChaosArgs),
    /// List the presets, or print one as a TOML scenario.
    Presets {
        /// Preset to print.
        name: Option<String>,
    },
    /// (internal) Serve a relay for the harness; spec on stdin.
    #[command(hide = true)]
    ServeRelay,
    /// (internal) Serve an agent for the harness; spec on stdin.
    #[command(hide = true)]
    ServeAgent,
}

/// A baseline system run under the same scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Baseline {
    /// nats-server (Debian package), publishers over TCP, subscribers over WebSocket.
    Nats,
}

#[derive(Debug, clap::Args)]
#[group(id = "what", required = true, multiple = false)]
struct Which {
    /// A preset (`loadtest presets` lists them).
    #[arg(long)]
    preset: Option<String>,
    /// A TOML scenario file.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// The CI smoke run: the whole pipeline for a few seconds; fails if nothing is delivered.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    which: Which,
    /// Also run the scenario through this baseline and report the ratio.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// JSON report.
    #[arg(long, default_value = "target/loadtest/report.json")]
    json: PathBuf,
    /// Markdown summary (default: beside the JSON, `.md`).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// SVG chart (default: beside the JSON, `.svg`).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Override the scenario's measured duration.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Override the scenario's number of relays (1 to 8; more than 1 starts `nats-server` as
    /// their backplane). `--relays 1` gives a scale-out preset's single-relay figures; with
    /// `placement = "away-from-agents"` it becomes `spread`.
    #[arg(long)]
    relays: Option<u32>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Run the relay and agent children with traces on, sampled at this ratio (0 to 1,
    /// `OTEL_TRACES_SAMPLER=parentbased_traceidratio`), exported over OTLP/HTTP to a
    /// discarding receiver in the harness (e.g. `0.01` for 1 %).
    #[arg(long, value_name = "RATIO")]
    trace_ratio: Option<f64>,
}

#[derive(Debug, clap::Args)]
struct ChaosArgs {
    /// How long the chaos lasts (`90s`, `2m`, `30m`, `1h`); the drain at the end comes on top.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// The steady phase at the end of `--duration`: no kills (network faults and session
    /// churn go on), and the memory verdict is judged on it. Default: a third of
    /// `--duration`, 60 s to 10 min; never less than 60 s.
    #[arg(long, value_parser = parse_duration)]
    steady: Option<std::time::Duration>,
    /// Seed of the schedule (kills, network faults, session churn) and of the fault proxy.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Containers written and watched.
    #[arg(long, default_value_t = 4)]
    pods: usize,
    /// Lines per second written, over all pods.
    #[arg(long, default_value_t = 8_000)]
    rate_lines_per_sec: u32,
    /// `0.log` is rotated at this size (older rotated files gzip-compressed, 5 kept).
    #[arg(long, default_value_t = 1 << 20)]
    rotate_bytes: u64,
    /// The largest RSS slope of the relay or the agent that passes, KiB per minute (either
    /// way).
    #[arg(long, default_value_t = 1024.0)]
    max_rss_slope_kib_per_min: f64,
    /// RSS samples left out at the start of each process life, seconds.
    #[arg(long, default_value_t = 30.0)]
    rss_warmup_secs: f64,
    /// Directory of `logrelay-relay` and `logrelay-agent` (default: beside loadtest, built
    /// first by cargo when run through `cargo run`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// JSON report (the processes' logs go beside it: `chaos-relay.log`, `chaos-agent.log`).
    #[arg(long, default_value = "target/loadtest/chaos.json")]
    json: PathBuf,
    /// Markdown summary (default: beside the JSON, `.md`).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    no_progress: bool,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    chaos::plan::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Chaos(args) => run_chaos(args).await,
            Command::Presets { name } => presets(name.as_deref()),
            Command::Median { reports } => median(&reports),
            Command::ServeRelay => children::serve_relay().await,
            Command::ServeAgent => children::serve_agent().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn presets(name: Option<&str>) -> anyhow::Result<()> {
    match name {
        Some(n) => print!("{}", Scenario::preset(n)?.to_toml()),
        None => {
            for n in PRESETS {
                let s = Scenario::preset(n)?;
                println!(
                    "{n:15} {} mode, {} streams, {} sessions ({} per stream), {}{}",
                    s.mode.as_str(),
                    s.streams(),
                    s.subscribers.sessions,
                    s.subscribers.per_stream,
                    s.rate_lines_per_sec
                        .map_or("unpaced".into(), |r| format!("{r} lines/s")),
                    if s.relays > 1 {
                        format!(", {} relays over NATS", s.relays)
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    Ok(())
}

fn median(paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        reports.push(
            serde_json::from_str::<report::Report>(&text)
                .with_context(|| format!("{} is not a loadtest report", p.display()))?,
        );
    }
    print!("{}", summary::markdown(&reports));
    Ok(())
}

fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "loadtest".to_owned() } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run_chaos(args: ChaosArgs) -> anyhow::Result<()> {
    let logs_dir = args
        .json
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    if let Some(steady) = args.steady.filter(|s| *s > args.duration) {
        anyhow::bail!(
            "--steady {steady:?} is longer than --duration {:?}: the steady phase is the end of \
             the soak (equal to it: a soak without kills)",
            args.duration
        );
    }
    let opts = chaos::ChaosOptions {
        duration: args.duration,
        steady: args.steady,
        seed: args.seed,
        pods: args.pods,
        rate_lines_per_sec: args.rate_lines_per_sec,
        rotate_bytes: args.rotate_bytes,
        bin_dir: args.bin_dir,
        logs_dir,
        max_rss_slope_bytes_per_min: args.max_rss_slope_kib_per_min * 1024.0,
        rss_warmup_secs: args.rss_warmup_secs,
        progress: !args.no_progress,
        command: command_line(),
    };
    let report = chaos::run(&opts).await?;
    let md_path = args.markdown.unwrap_or_else(|| beside(&args.json, "md"));
    for p in [&args.json, &md_path] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    let md = report.markdown();
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("{md}");
    println!(
        "report: {}  summary: {}",
        args.json.display(),
        md_path.display()
    );
    if !report.passed {
        anyhow::bail!("the chaos soak failed: {}", report.failures.join("; "));
    }
    Ok(())
}

fn beside(json: &Path, ext: &str) -> PathBuf {
    json.with_extension(ext)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    logrelay_tls::install_provider();
    let (mut scenario, preset) = match (&args.which.preset, &args.which.scenario) {
        (Some(p), _) => (Scenario::preset(p)?, Some(p.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (Scenario::from_toml(&text)?, None)
        }
        (None, None) => (Scenario::quick(), None),
    };
    if let Some(d) = args.duration_secs {
        scenario.duration_secs = d;
    }
    if let Some(n) = args.relays.filter(|n| *n != scenario.relays) {
        // Named apart, so that `loadtest median` keeps its runs apart from the scenario's own.
        scenario.name = format!(
            "{} on {n} relay{}",
            scenario.name,
            if n == 1 { "" } else { "s" }
        );
        scenario.relays = n;
        if n == 1 {
            scenario.placement = scenario::Placement::Spread;
        }
    }
    scenario.validate()?;
    let command = std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "loadtest".to_owned() } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let sink = match args.trace_ratio {
        Some(r) if !(0.0..=1.0).contains(&r) => {
            anyhow::bail!("--trace-ratio {r}: a ratio from 0 to 1")
        }
        Some(r) => {
            let (url, stats) = otlp_sink::start().context("starting the OTLP sink")?;
            children::set_child_env(vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), url),
                (
                    "OTEL_TRACES_SAMPLER".into(),
                    "parentbased_traceidratio".into(),
                ),
                ("OTEL_TRACES_SAMPLER_ARG".into(), r.to_string()),
            ]);
            Some(stats)
        }
        None => None,
    };
    let opts = run::RunOptions {
        baseline_nats: args.baseline == Some(Baseline::Nats),
        progress: !args.no_progress,
        command,
        preset,
    };
    let report = run::run(&scenario, &opts).await?;
    if let Some(stats) = sink {
        eprintln!(
            "traces: {} OTLP exports, {} bytes received",
            stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            stats.bytes.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    let json = serde_json::to_value(&report)?;
    report::check_fields(&json).map_err(anyhow::Error::msg)?;
    let md_path = args.markdown.unwrap_or_else(|| beside(&args.json, "md"));
    let svg_path = args.svg.unwrap_or_else(|| beside(&args.json, "svg"));
    for p in [&args.json, &md_path, &svg_path] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    let md = report.markdown();
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(&svg_path, chart::svg(&report))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    println!("{md}");
    println!(
        "report: {}  summary: {}  chart: {}",
        args.json.display(),
        md_path.display(),
        svg_path.display()
    );
    if scenario.subscribers.sessions > 0 && report.relay.deliveries_per_sec <= 0.0 {
        anyhow::bail!("the pipeline delivered nothing to its subscribers");
    }
    if let Some(b) = &report.baseline
        && b.deliveries_per_sec <= 0.0
    {
        anyhow::bail!("the nats-server baseline delivered nothing to its subscribers");
    }
    Ok(())
}
