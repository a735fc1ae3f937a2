//! One module per `pangaea-ctl` command. Each takes the [`Ctx`] (where the cluster's
//! configuration and state are) and its own arguments from [`crate::cli`]; what several
//! commands share lives outside this module ([`crate::daemon`], [`crate::etcd`],
//! [`crate::reconcile`], [`crate::status`]).

pub mod artifacts;
pub mod backup;
pub mod clusters;
pub mod compile;
pub mod completion;
pub mod cost;
pub mod doctor;
pub mod down;
pub mod drill;
pub mod env;
pub mod etcd;
pub mod image;
pub mod init;
pub mod kubeconfig;
pub mod logs;
pub mod node;
pub mod pki;
pub mod plan;
pub mod serve;
pub mod ssh;
pub mod status;
pub mod token;
pub mod up;

use crate::compile::Compilation;
use crate::provider::{self, Provider};
use crate::state_dir::StateDir;
use std::path::PathBuf;

/// Where a command finds its cluster.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The cluster's `.pangaea/`.
    pub state: StateDir,
    /// `pangaea.yaml` (a missing file means the defaults).
    pub config: PathBuf,
    /// The local provider's node image cache.
    pub image_cache: PathBuf,
}

impl Ctx {
    /// Loads the configuration, templates and PKI.
    pub fn compilation(&self) -> anyhow::Result<Compilation> {
        Ok(Compilation::load(&self.config, &self.state)?)
    }

    /// The configured provider, after checking this process may drive it.
    pub fn provider(&self, c: &Compilation) -> anyhow::Result<Box<dyn Provider>> {
        let p = provider::from_config(&c.loaded, &self.state, &self.image_cache)?;
        p.check_privileges()?;
        Ok(p)
    }
}

/// Writes a command's output to stdout: what [`outln!`](crate::outln) and
/// [`out!`](crate::out) call, instead of `println!`, in every command. A reader that went
/// away (`pangaea-ctl env | head -1`) ends the command at once, quietly and with status 0,
/// as other command-line tools do (`println!` would panic there); any other write error
/// is the panic `println!` would give.
pub fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    write_stdout(|out| {
        out.write_fmt(args)?;
        if newline {
            out.write_all(b"\n")?;
        }
        Ok(())
    });
}

/// [`write_out`] for bytes as they are (a node's journal).
pub fn write_out_bytes(bytes: &[u8]) {
    use std::io::Write;
    write_stdout(|out| out.write_all(bytes));
}

/// Runs `write` on stdout and flushes it, with [`write_out`]'s rule for a reader that went
/// away.
fn write_stdout(write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) {
    use std::io::Write;
    crate::progress::settle();
    let mut out = std::io::stdout().lock();
    let r = write(&mut out).and_then(|()| out.flush());
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => panic!("failed printing to stdout: {e}"),
    }
}

/// Prints a command's data as `output` asks: the table `table` prints, or `data` as JSON
/// or YAML (the same fields). The one place `-o` is obeyed.
pub fn print_data<T: serde::Serialize + ?Sized>(
    output: crate::cli::Output,
    data: &T,
    table: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use crate::cli::Output;
    match output {
        Output::Table => table(),
        Output::Json => print_out(&(serde_json::to_string_pretty(data)? + "\n")),
        Output::Yaml => print_out(&serde_norway::to_string(data)?),
    }
}

/// Writes `text` as a command's output ([`write_out`]).
pub fn print_out(text: &str) -> anyhow::Result<()> {
    write_out(format_args!("{text}"), false);
    Ok(())
}

/// A progress line of a long operation.
pub fn step(msg: &str) {
    crate::progress::step(msg);
}

/// Whether stderr gets colours: only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>).
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Prints the configuration's warnings with their location.
pub fn print_warnings(loaded: &pangaea_compiler::config::Loaded) {
    for w in &loaded.warnings {
        let at = w
            .location
            .map(|(l, c)| format!(":{l}:{c}"))
            .unwrap_or_default();
        crate::errln!("warning: {}{at}: {}", loaded.file, w.message);
    }
}

/// Prints what `provider`'s nodes cannot do for the cluster's worker runtime
/// ([`crate::provider::Provider::runtime_findings`]).
pub fn print_runtime_findings(
    provider: &dyn crate::provider::Provider,
    c: &crate::compile::Compilation,
) {
    let worker = c
        .model
        .nodes
        .iter()
        .any(|n| n.roles.contains(&pangaea_compiler::roles::Role::Worker));
    let kubelet = worker.then_some(c.loaded.config.versions.kubernetes.as_str());
    for f in provider.runtime_findings(kubelet) {
        crate::errln!("warning: {f}");
    }
}

/// A byte count for people: `1.5 MiB`.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The boot ID of node `name`'s last report, if it reported.
pub fn boot_id(nodes: &[pangaea_proto::NodeInfo], name: &str) -> Option<String> {
    nodes
        .iter()
        .find(|n| n.name == name)
        .and_then(|n| n.last_report.as_ref())
        .map(|r| r.boot_id.clone())
}

/// Waits until node `name` reports healthy from a boot other than `before` (the report of
/// the boot before a reboot or a crash does not count), polling the controller's view.
pub async fn wait_healthy_from_new_boot(
    backend: &mut crate::admin::Backend,
    name: &str,
    before: Option<&str>,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let nodes = backend.list_nodes().await?;
        let info = nodes.iter().find(|n| n.name == name && !n.removed);
        let health = crate::health::assess(info, crate::records::now());
        if boot_id(&nodes, name).as_deref() != before && health.is_healthy() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(crate::exit::Unhealthy(format!(
                "{name} is not healthy from a new boot after {timeout:?}: {health}"
            ))
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
