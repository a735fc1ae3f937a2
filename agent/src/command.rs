//! The system boundary for programs the agent runs for a job (`ctr images import`,
//! `journalctl`): real processes on nodes (through `tokio::process`), a recording fake in
//! integration tests, which then need no containerd and no journal.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The most of a streamed program's standard error kept for its failure message.
const STDERR_KEPT: usize = 16 * 1024;

/// Runs a program to completion and collects its output.
#[tonic::async_trait]
pub trait CommandRunner: Send + Sync + 'static {
    /// Runs `program` with `args`; the process is killed if the returned future is
    /// dropped (a job cancelled or timed out).
    async fn run(&self, program: &Path, args: &[String]) -> std::io::Result<Output>;

    /// Runs `program` with `args`, sending its standard output to `out` as it comes (and
    /// waiting while `out` is full); returns its status and the end of its standard error
    /// (the returned `stdout` is empty). The process is killed if the returned future is
    /// dropped, or once `out` is closed. By default: [`CommandRunner::run`], its output
    /// sent whole.
    async fn stream(
        &self,
        program: &Path,
        args: &[String],
        out: mpsc::Sender<Vec<u8>>,
    ) -> std::io::Result<Output> {
        let mut o = self.run(program, args).await?;
        if !o.stdout.is_empty() {
            let _ = out.send(std::mem::take(&mut o.stdout)).await;
        }
        Ok(o)
    }
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

    async fn stream(
        &self,
        program: &Path,
        args: &[String],
        out: mpsc::Sender<Vec<u8>>,
    ) -> std::io::Result<Output> {
        use tokio::io::AsyncReadExt;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let collect_stderr = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                if all.len() > STDERR_KEPT {
                    all.drain(..all.len() - STDERR_KEPT);
                }
            }
            all
        });
        // Whether the output was read to its end (else nobody reads any more).
        let forward = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    n = stdout.read(&mut buf) => {
                        let n = n?;
                        if n == 0 {
                            return Ok(true);
                        }
                        if out.send(buf[..n].to_vec()).await.is_err() {
                            return Ok(false);
                        }
                    }
                    // A program with nothing to say (`journalctl --follow`) is stopped
                    // as soon as the reader goes, not at its next line.
                    () = out.closed() => return Ok::<bool, std::io::Error>(false),
                }
            }
        };
        if !forward.await? {
            let _ = child.start_kill();
        }
        let status = child.wait().await?;
        Ok(Output {
            status,
            stdout: Vec::new(),
            stderr: collect_stderr.await.unwrap_or_default(),
        })
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

    #[tokio::test]
    async fn a_streamed_process_sends_as_it_goes_and_dies_when_nobody_reads() {
        let (tx, mut rx) = mpsc::channel(1);
        let run = tokio::spawn(async move {
            Processes
                .stream(
                    Path::new("/bin/sh"),
                    &[
                        "-c".into(),
                        // Standard error is written before the line we wait for, so
                        // it is in the pipe when the reader goes, whatever the timing.
                        "echo oops >&2; echo first; exec sleep 30".into(),
                    ],
                    tx,
                )
                .await
        });
        // The first line arrives while the program still runs.
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("output before the program ends")
            .unwrap();
        assert_eq!(first, b"first\n");
        assert!(!run.is_finished());
        // The reader goes away while the program is silent: it is killed at once, not
        // waited for 30 s.
        drop(rx);
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), run)
            .await
            .expect("the program is stopped")
            .unwrap()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert_eq!(out.stderr, b"oops\n");
    }
}
