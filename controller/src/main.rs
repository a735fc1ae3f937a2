//! `pangaea-ctl`: parse arguments, set up logging, build the runtime, run the command.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = pangaea_controller::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // kube-rs logs each failed connection as an ERROR; `node drain` reports an
            // unreachable API itself, in one warning that says what it does instead.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(pangaea_controller::cmd::colour())
        .init();
    pangaea_core::install_crypto_provider();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(pangaea_controller::cli::run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes on one line: what an operator acts on. (Returning
            // the error from main would print a backtrace whenever RUST_BACKTRACE is set.)
            eprintln!("Error: {e:#}");
            ExitCode::from(pangaea_controller::exit::code_of(&e) as u8)
        }
    }
}
