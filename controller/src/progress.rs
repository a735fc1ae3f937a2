//! What a command tells the operator while it works, on stderr: each step as a line
//! (`==> building the node image`), and on a terminal a spinner with the time spent beside
//! the step in progress, so a wait longer than a second shows it is alive. Not on a
//! terminal (a log, CI, a pipe) the lines are plain and nothing is redrawn; `-q` silences
//! the steps. Notes (warnings) are printed above the spinner, never through it, and the
//! command's output on stdout first settles the spinner ([`settle`]).

// The spinner is only ever locked inside these synchronous functions, for one redraw, never
// across an await: a blocking lock cannot stall the runtime here.
#![allow(
    clippy::disallowed_types,
    reason = "the lock is held for one redraw in synchronous code, never across an await"
)]

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How steps are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Not at all (`-q`).
    Quiet,
    /// One line per step (stderr is not a terminal).
    Plain,
    /// A spinner for the step in progress, a line for each one done.
    Terminal,
}

static MODE: OnceLock<Mode> = OnceLock::new();
static CURRENT: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Chooses the mode once, at start: quiet when asked, a spinner when stderr is a terminal
/// (and `TERM` is not `dumb`), else plain lines.
pub fn init(quiet: bool) {
    use std::io::IsTerminal;
    let terminal =
        std::io::stderr().is_terminal() && std::env::var("TERM").is_ok_and(|t| t != "dumb");
    let mode = match (quiet, terminal) {
        (true, _) => Mode::Quiet,
        (false, true) => Mode::Terminal,
        (false, false) => Mode::Plain,
    };
    let _ = MODE.set(mode);
}

fn mode() -> Mode {
    *MODE.get().unwrap_or(&Mode::Plain)
}

/// Starts step `msg`: the step before it is done. A message indented with spaces is a
/// detail of the step in progress (a wait's latest state): on a terminal it is shown beside
/// that step's spinner, replacing the detail before; elsewhere it is a line of its own.
pub fn step(msg: &str) {
    match mode() {
        Mode::Quiet => {}
        Mode::Plain => eprintln!("==> {msg}"),
        Mode::Terminal => {
            let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(bar) = current.as_ref().filter(|_| msg.starts_with(' ')) {
                let step = bar.message();
                let step = step.split(" — ").next().unwrap_or_default().to_owned();
                bar.set_message(format!("{step} — {}", msg.trim_start()));
                return;
            }
            if let Some(done) = current.take() {
                finish(done);
            }
            let colour = crate::cmd::colour();
            let template = if colour {
                "{spinner:.cyan} {msg} \x1b[2m{elapsed}\x1b[0m"
            } else {
                "{spinner} {msg} {elapsed}"
            };
            let style = ProgressStyle::with_template(template)
                .expect("the template is valid")
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏= ");
            let bar = ProgressBar::new_spinner()
                .with_style(style)
                .with_message(format!("==> {msg}"));
            bar.enable_steady_tick(Duration::from_millis(100));
            *current = Some(bar);
        }
    }
}

/// Prints `text` (a warning, a table) on stderr, above the spinner if one runs.
pub fn note(text: std::fmt::Arguments<'_>) {
    let current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    match current.as_ref() {
        Some(bar) => bar.suspend(|| eprintln!("{text}")),
        None => eprintln!("{text}"),
    }
}

/// Ends the step in progress, leaving its line: before the command's output or error.
pub fn settle() {
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(done) = current.take() {
        finish(done);
    }
}

/// Leaves a finished step's line: its message, and the time it took when that was a
/// second or more.
fn finish(bar: ProgressBar) {
    let took = bar.elapsed();
    let template = match (took >= Duration::from_secs(1), crate::cmd::colour()) {
        (false, _) => "  {msg}".to_owned(),
        (true, true) => format!("  {{msg}} \x1b[2m({:.1}s)\x1b[0m", took.as_secs_f64()),
        (true, false) => format!("  {{msg}} ({:.1}s)", took.as_secs_f64()),
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.finish();
}
