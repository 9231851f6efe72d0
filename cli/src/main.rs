//! `logrelay`: `tail` a stream through the relay, or run the loopback `demo`.

use clap::{Parser, Subcommand};

/// logrelay: live logs of running tasks, relayed in memory.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a stream's lines like `kubectl logs -f`.
    Tail(Box<logrelay::tail::TailArgs>),
    /// Run relay + agent + sample workload on loopback (certificates minted in memory).
    Demo(logrelay::demo::DemoArgs),
    /// Session tokens for testing: `keygen` (signing key + JWKS), `jwks`, `mint`.
    Token(logrelay::token::TokenArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    logrelay_tls::install_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Tail(args) => match logrelay::tail::run(*args).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("logrelay tail: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Token(args) => match logrelay::token::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("logrelay token: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Demo(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("LOGRELAY_LOG")
                        .unwrap_or_else(|_| "warn".into()),
                )
                .init();
            match logrelay::demo::run(args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("logrelay demo: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
