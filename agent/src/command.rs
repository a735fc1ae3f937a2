//! The system boundary for programs the agent runs for a job (today `ctr images import`):
//! real processes on nodes (through `tokio::process`), a recording fake in integration
//! tests, which then need no containerd.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::Arc;
use tokio::sync::watch;

/// Runs a program to completion and collects its output.
#[tonic::async_trait]
pub trait CommandRunner: Send + Sync + 'static {
    /// Runs `program` with `args`; the process is killed if the returned future is
    /// dropped (a job cancelled or timed out).
    async fn run(&self, program: &Path, args: &[String]) -> std::io::Result<Output>;
}

/// Real processes, with `tokio::process` so the agent never blocks.
pub struct Processes;

#[tonic::async_trait]
impl CommandRunner for Processes {
    async fn run(&self, program: &Path, args: &[String]) -> std::io::Result<Output> {
        tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
    }
}

/// One call a [`RecordingCommandRunner`] saw.
#[derive(Clone, Debug)]
pub struct Call {
    /// The program, as the agent resolved it.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

type Answer = Arc<dyn Fn(&Call) -> std::io::Result<Output> + Send + Sync>;

/// A fake for tests: records every call and answers with a function of the call (by
/// default: success with no output). Its cells are watch channels, as in
/// [`crate::service_manager::RecordingServiceManager`]: no lock is held while it answers.
pub struct RecordingCommandRunner {
    calls: watch::Sender<Vec<Call>>,
    answer: watch::Sender<Answer>,
}

impl Default for RecordingCommandRunner {
    fn default() -> Self {
        let succeed: Answer = Arc::new(|_| Ok(output(0, "", "")));
        RecordingCommandRunner {
            calls: watch::channel(Vec::new()).0,
            answer: watch::channel(succeed).0,
        }
    }
}

impl RecordingCommandRunner {
    /// Answers every following call with `answer(call)`. It runs while the agent waits, so
    /// it may look at files the call names (they exist only during the call).
    pub fn answer_with(
        &self,
        answer: impl Fn(&Call) -> std::io::Result<Output> + Send + Sync + 'static,
    ) {
        self.answer.send_replace(Arc::new(answer));
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}

#[tonic::async_trait]
impl CommandRunner for RecordingCommandRunner {
    async fn run(&self, program: &Path, args: &[String]) -> std::io::Result<Output> {
        let call = Call {
            program: program.to_owned(),
            args: args.to_vec(),
        };
        self.calls.send_modify(|c| c.push(call.clone()));
        let answer = self.answer.borrow().clone();
        answer(&call)
    }
}

/// An [`Output`] with exit code `code` and the given standard output and error.
pub fn output(code: i32, stdout: &str, stderr: &str) -> Output {
    use std::os::unix::process::ExitStatusExt;
    Output {
        status: ExitStatus::from_raw(code << 8),
        stdout: stdout.as_bytes().to_vec(),
        stderr: stderr.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn real_processes_report_exit_codes_and_output() {
        let out = Processes
            .run(
                Path::new("/bin/sh"),
                &["-c".into(), "echo out; echo err >&2; exit 3".into()],
            )
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(output(3, "", "").status.code(), Some(3));
    }
}
