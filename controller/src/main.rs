//! `pangaea-ctl`: parse arguments, set up logging and progress, build the runtime, run the
//! command.
#![allow(
    clippy::disallowed_types,
    reason = "the log writer's lock is tracing's own, held for one write, never across an await"
)]

use clap::Parser;
use pangaea_controller::cli::{Cli, Command};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    pangaea_controller::progress::init(cli.quiet);
    let log_file = init_logging(&cli);
    pangaea_core::install_crypto_provider();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(pangaea_controller::cli::run(cli)));
    match result {
        Ok(()) => {
            pangaea_controller::progress::settle();
            ExitCode::SUCCESS
        }
        Err(e) => {
            pangaea_controller::progress::settle();
            // The message and its causes on one line: what an operator acts on. (Returning
            // the error from main would print a backtrace whenever RUST_BACKTRACE is set.)
            eprintln!("Error: {e:#}");
            let code = pangaea_controller::exit::code_of(&e);
            if let (Some(log), pangaea_controller::exit::Exit::Failed) = (log_file, code) {
                eprintln!("(log records: {}; or run again with -v)", log.display());
            }
            ExitCode::from(code as u8)
        }
    }
}

/// Log records go to stderr for `serve` (its log file is its stderr) and with `-v`; for
/// every other command to the host's log file, so a person reads one message, not records.
/// Returns the file, when records go there.
fn init_logging(cli: &Cli) -> Option<PathBuf> {
    let level = match cli.verbose {
        0 | 1 => "info",
        _ => "debug",
    };
    // kube-rs logs each failed connection as an ERROR; `node drain` reports an unreachable
    // API itself, in one warning that says what it does instead.
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| format!("{level},kube_client=off").into())
    };
    if cli.verbose > 0 || matches!(cli.command, Command::Serve { .. }) {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(pangaea_controller::cmd::colour())
            .init();
        return None;
    }
    let path = pangaea_controller::host_state::log_file();
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::sync::Mutex::new(LazyLog {
            path: path.clone(),
            file: None,
        }))
        .with_ansi(false)
        .init();
    Some(path)
}

/// The log file, opened at the first record: a command that logs nothing creates nothing.
/// Where it cannot be opened, records go to stderr instead.
struct LazyLog {
    path: PathBuf,
    file: Option<Result<std::fs::File, ()>>,
}

impl std::io::Write for LazyLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let file = self
            .file
            .get_or_insert_with(|| open_log(&self.path).map_err(|_| ()));
        match file {
            Ok(f) => f.write(buf),
            Err(()) => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(Ok(f)) => f.flush(),
            _ => Ok(()),
        }
    }
}

/// Opens the log file for appending (0600: records name the cluster's nodes and paths); one
/// grown past 16 MiB is moved to `.1` first, so it stays bounded.
fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 16 << 20) {
        std::fs::rename(path, path.with_extension("log.1"))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}
