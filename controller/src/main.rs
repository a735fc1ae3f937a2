//! `pangaea-ctl`: parse arguments, set up logging, build the runtime, run the command.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = pangaea_controller::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    pangaea_core::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(pangaea_controller::cli::run(cli))
}
