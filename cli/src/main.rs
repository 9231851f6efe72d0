//! `logrelay`: list streams, tail them, watch CPU and memory, or run the loopback `demo`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use logrelay::exit::{self, CliError};

const EXAMPLES: &str = "\
Examples:
  logrelay list                              # the streams this token may read
  logrelay tail -n shop --pod-regex 'cart-.*' # every cart pod, stern-style
  logrelay top -n shop                       # CPU and memory per pod and container
  logrelay --help-exit-codes                 # what the exit codes mean

Connection: --url / LOGRELAY_URL, --ca-file, --token-file, LOGRELAY_TOKEN, or a --context of
the config file ~/.config/logrelay/config.toml (see docs/cli.md).";

const EXIT_CODES: &str = "\
Exit codes:
  0  ended normally (a one-off read finished, the output was closed, e.g. `| head`)
  1  failure (a request the relay refused, an unreadable message, an output error)
  2  usage (bad flag or value, config file, context, token file or command, CA file)
  3  authentication (the relay refused the token: HTTP 401/403, or a forbidden selector)
  4  not found (tail --no-follow: no stream matches the selector)
  5  connection (the relay could not be reached, or the connection was lost and every
     reconnection attempt failed)
  6  too many streams (the selector matches more than --max-streams)";

/// logrelay: live logs and metrics of running tasks, relayed in memory.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES, after_long_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
struct Cli {
    /// Print what the exit codes mean and exit.
    #[arg(long, exclusive = true)]
    help_exit_codes: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the streams the token may read: labels, kind, and whether their agent is connected.
    List(Box<logrelay::list::ListArgs>),
    /// Print the lines of every stream a selector matches, like kubectl logs -f / stern.
    Tail(Box<logrelay::tail::TailArgs>),
    /// Live CPU and memory per pod and container, like kubectl top but streaming.
    Top(Box<logrelay::top::TopArgs>),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Run relay + agent + sample workload on loopback (certificates minted in memory).
    Demo(logrelay::demo::DemoArgs),
    /// Session tokens for testing: `keygen` (signing key + JWKS), `jwks`, `mint`.
    Token(logrelay::token::TokenArgs),
}

fn done(name: &str, r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logrelay::output::notice(name, &e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    logrelay_tls::install_provider();
    let cli = Cli::parse();
    if cli.help_exit_codes {
        println!("{EXIT_CODES}");
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        return ExitCode::from(exit::USAGE);
    };
    match command {
        Command::List(args) => done("list", logrelay::list::run(*args).await),
        Command::Tail(args) => done("tail", logrelay::tail::run(*args).await),
        Command::Top(args) => done("top", logrelay::top::run(*args).await),
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "logrelay", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Token(args) => match logrelay::token::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                logrelay::output::notice("token", &e.to_string());
                ExitCode::FAILURE
            }
        },
        Command::Demo(args) => {
            // Diagnostics on stderr: stdout carries only the demo's own instructions.
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("LOGRELAY_LOG")
                        .unwrap_or_else(|_| "warn".into()),
                )
                .init();
            match logrelay::demo::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("logrelay demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
