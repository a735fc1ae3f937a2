//! One-shot jobs for agents, such as loading an image archive into a node's containerd
//! ([`crate::image`]). The controller cannot call an agent, so an agent keeps a second
//! stream open beside its assignment watch (`NodeService/WatchJobs`) and receives its
//! outstanding jobs on it; it reports progress and the outcome with `ReportJob`.
//!
//! Jobs are not assignments: an assignment is the node's desired state, re-applied at every
//! boot, while a job runs once. So jobs live in memory only, for as long as someone waits for
//! them ([`JobHandle`]: dropping it cancels the job), and each is bounded three ways:
//! its timeout, the number of times it is handed to a node ([`MAX_DELIVERIES`]: a node whose
//! agent keeps restarting while running it gets it again, but not forever), and the caller
//! going away. A job's state per node is a [`pb::JobReport`]; the first final report wins.
//!
//! A job may have output (a journal read): the node streams it with `SendJobOutput` into
//! a bounded channel whose receiver the submitter holds ([`Jobs::submit_with_output`]), so
//! a node can never send faster than the reader takes it, and only the node the job was
//! given to can send into it ([`Jobs::output`]).
//!
//! The state sits in a watch channel used as a cell (as the agent's recording fakes do):
//! its lock is held only for map operations, never across an `.await`.

use pangaea_proto as pb;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// How many chunks of a job's output wait for the reader before the node must wait.
const OUTPUT_BUFFER: usize = 16;

/// How many times a job is handed to one node (once per `WatchJobs` stream that finds it
/// outstanding) before that node's part fails.
pub const MAX_DELIVERIES: u32 = 3;

/// Each target node's latest report of one job.
pub type Statuses = BTreeMap<String, pb::JobReport>;

/// Whether a report is an outcome (nothing follows it).
pub fn is_final(r: &pb::JobReport) -> bool {
    matches!(r.state(), pb::JobState::Succeeded | pb::JobState::Failed)
}

/// A failed report of job `id` saying `message`.
pub fn failed(id: &str, message: impl Into<String>) -> pb::JobReport {
    let mut r = pb::JobReport {
        id: id.to_owned(),
        message: message.into(),
        ..Default::default()
    };
    r.set_state(pb::JobState::Failed);
    r
}

/// Why a node's job report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportRefusal {
    /// No such job (finished, cancelled, or from before the controller restarted).
    #[error("no job {0:?} is outstanding (it finished, was cancelled or timed out)")]
    Unknown(String),
    /// The job exists but was not given to the reporting node.
    #[error("job {id:?} was not given to node {node:?}")]
    NotTarget {
        /// The job.
        id: String,
        /// The reporting node.
        node: String,
    },
    /// Output sent for a job that has none.
    #[error("job {0:?} has no output")]
    NoOutput(String),
}

/// The jobs of one controller.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<watch::Sender<Inner>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            inner: Arc::new(watch::channel(Inner::default()).0),
        }
    }
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<String, NodeJobs>,
    jobs: HashMap<String, Entry>,
}

struct NodeJobs {
    /// The node's outstanding jobs, as its streams send them.
    set: watch::Sender<Arc<pb::JobSet>>,
    /// Open `WatchJobs` streams of the node.
    streams: usize,
}

impl Default for NodeJobs {
    fn default() -> Self {
        NodeJobs {
            set: watch::channel(Arc::new(pb::JobSet::default())).0,
            streams: 0,
        }
    }
}

struct Entry {
    deliveries: BTreeMap<String, u32>,
    status: watch::Sender<Statuses>,
    /// Where the job's output goes, for a job that has one.
    output: Option<mpsc::Sender<Vec<u8>>>,
}

impl Inner {
    fn node(&mut self, node: &str) -> &mut NodeJobs {
        self.nodes.entry(node.to_owned()).or_default()
    }

    /// Adds or removes job `id` in `node`'s set (streams see the new set).
    fn set_outstanding(&mut self, node: &str, job: Option<&pb::Job>, id: &str) {
        let n = self.node(node);
        n.set.send_if_modified(|set| {
            let present = set.jobs.iter().any(|j| j.id == id);
            match (job, present) {
                (Some(j), false) => {
                    Arc::make_mut(set).jobs.push(j.clone());
                    true
                }
                (None, true) => {
                    Arc::make_mut(set).jobs.retain(|j| j.id != id);
                    true
                }
                _ => false,
            }
        });
    }

    /// Records `report` as `node`'s state of its job unless that part already has an
    /// outcome; an outcome takes the job out of the node's set.
    fn record(&mut self, node: &str, report: pb::JobReport) {
        let id = report.id.clone();
        let Some(e) = self.jobs.get(&id) else { return };
        let done = is_final(&report);
        let changed = e.status.send_if_modified(|s| match s.get_mut(node) {
            Some(cur) if !is_final(cur) && *cur != report => {
                *cur = report;
                true
            }
            _ => false,
        });
        if changed && done {
            self.set_outstanding(node, None, &id);
        }
    }
}

/// Decrements the node's stream count when its `WatchJobs` stream is dropped.
pub struct StreamGuard {
    jobs: Jobs,
    node: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.jobs.with(|inner| {
            if let Some(n) = inner.nodes.get_mut(&self.node) {
                n.streams = n.streams.saturating_sub(1);
            }
        });
    }
}

/// A submitted job: its per-node states, and its cancellation when dropped.
pub struct JobHandle {
    jobs: Jobs,
    /// The job's id.
    pub id: String,
    /// Each target node's latest report.
    pub status: watch::Receiver<Statuses>,
}

impl JobHandle {
    /// Gives `node`'s part the outcome `failed(message)` unless it has one already.
    pub fn fail(&self, node: &str, message: impl Into<String>) {
        let report = failed(&self.id, message);
        self.jobs.with(|inner| inner.record(node, report));
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.jobs.cancel(&self.id);
    }
}

impl Jobs {
    /// Runs `f` on the state, alone.
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut out = None;
        self.inner.send_if_modified(|inner| {
            out = Some(f(inner));
            false
        });
        out.expect("the closure ran")
    }

    /// Hands `job` to each of `nodes`; every node starts `queued`.
    pub fn submit(&self, job: pb::Job, nodes: &[String]) -> JobHandle {
        self.submit_inner(job, nodes, None)
    }

    /// Hands `job` to `node` alone, with an output: what the node sends with
    /// `SendJobOutput` arrives on the receiver, at most [`OUTPUT_BUFFER`] chunks ahead of
    /// the reader.
    pub fn submit_with_output(
        &self,
        job: pb::Job,
        node: &str,
    ) -> (JobHandle, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
        (self.submit_inner(job, &[node.to_owned()], Some(tx)), rx)
    }

    /// Where `node`'s output of job `id` goes: refused for a job that is not outstanding,
    /// was not given to `node`, or has no output.
    pub fn output(&self, node: &str, id: &str) -> Result<mpsc::Sender<Vec<u8>>, ReportRefusal> {
        self.with(|inner| {
            let e = inner
                .jobs
                .get(id)
                .ok_or_else(|| ReportRefusal::Unknown(id.to_owned()))?;
            if !e.status.borrow().contains_key(node) {
                return Err(ReportRefusal::NotTarget {
                    id: id.to_owned(),
                    node: node.to_owned(),
                });
            }
            e.output
                .clone()
                .ok_or_else(|| ReportRefusal::NoOutput(id.to_owned()))
        })
    }

    fn submit_inner(
        &self,
        job: pb::Job,
        nodes: &[String],
        output: Option<mpsc::Sender<Vec<u8>>>,
    ) -> JobHandle {
        self.with(|inner| {
            let queued = |node: &String| {
                let mut r = pb::JobReport {
                    id: job.id.clone(),
                    ..Default::default()
                };
                r.set_state(pb::JobState::Queued);
                (node.clone(), r)
            };
            let (status, rx) = watch::channel(nodes.iter().map(queued).collect());
            inner.jobs.insert(
                job.id.clone(),
                Entry {
                    deliveries: BTreeMap::new(),
                    status,
                    output,
                },
            );
            for n in nodes {
                inner.set_outstanding(n, Some(&job), &job.id);
            }
            JobHandle {
                jobs: self.clone(),
                id: job.id,
                status: rx,
            }
        })
    }

    /// A new `WatchJobs` stream of `node`: its outstanding jobs now and as they change. Each
    /// job outstanding now counts as handed to the node once more; a job handed out
    /// [`MAX_DELIVERIES`] times already fails for this node instead.
    pub fn subscribe(&self, node: &str) -> (watch::Receiver<Arc<pb::JobSet>>, StreamGuard) {
        self.with(|inner| {
            let outstanding: Vec<String> = inner
                .node(node)
                .set
                .borrow()
                .jobs
                .iter()
                .map(|j| j.id.clone())
                .collect();
            for id in outstanding {
                let Some(e) = inner.jobs.get_mut(&id) else {
                    continue;
                };
                let n = e.deliveries.entry(node.to_owned()).or_default();
                *n += 1;
                if *n > MAX_DELIVERIES {
                    let msg = format!(
                        "handed to the node {MAX_DELIVERIES} times without an outcome: its agent restarted while running the job each time (see its log: journalctl -u pangaea-agent)"
                    );
                    inner.record(node, failed(&id, msg));
                }
            }
            let n = inner.node(node);
            n.streams += 1;
            let rx = n.set.subscribe();
            (
                rx,
                StreamGuard {
                    jobs: self.clone(),
                    node: node.to_owned(),
                },
            )
        })
    }

    /// Whether `node` has a `WatchJobs` stream open.
    pub fn connected(&self, node: &str) -> bool {
        self.with(|inner| inner.nodes.get(node).is_some_and(|n| n.streams > 0))
    }

    /// Records `node`'s report of one of its jobs. A report after the node's outcome is
    /// ignored (an agent sends its outcome again after reconnecting).
    pub fn report(&self, node: &str, report: pb::JobReport) -> Result<(), ReportRefusal> {
        self.with(|inner| {
            let Some(e) = inner.jobs.get(&report.id) else {
                return Err(ReportRefusal::Unknown(report.id));
            };
            if !e.status.borrow().contains_key(node) {
                return Err(ReportRefusal::NotTarget {
                    id: report.id,
                    node: node.to_owned(),
                });
            }
            inner.record(node, report);
            Ok(())
        })
    }

    /// Forgets job `id`: it leaves every node's set (their agents stop it).
    pub fn cancel(&self, id: &str) {
        self.with(|inner| {
            let Some(e) = inner.jobs.remove(id) else {
                return;
            };
            for node in e.status.borrow().keys() {
                inner.set_outstanding(node, None, id);
            }
            tracing::debug!(job = id, "job forgotten");
        })
    }

    /// Ends `node`'s streams and fails its outstanding jobs (the node was removed or
    /// replaced).
    pub fn close(&self, node: &str, why: &str) {
        self.with(|inner| {
            let Some(n) = inner.nodes.remove(node) else {
                return;
            };
            for j in &n.set.borrow().jobs {
                inner.record(node, failed(&j.id, why));
            }
        })
    }
}

/// A node's `WatchJobs` stream.
pub type JobStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::JobSet, tonic::Status>> + Send>>;

/// `node`'s `WatchJobs` stream: its outstanding jobs now and at each change; the node
/// counts as connected while the stream lives.
pub fn stream(jobs: &Jobs, node: &str) -> JobStream {
    use tokio_stream::StreamExt;
    let (rx, guard) = jobs.subscribe(node);
    Box::pin(
        tokio_stream::wrappers::WatchStream::new(rx).map(move |set| {
            let _alive = &guard;
            Ok((*set).clone())
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> pb::Job {
        pb::Job {
            id: id.into(),
            timeout_seconds: 60,
            kind: None,
        }
    }

    fn report(id: &str, state: pb::JobState) -> pb::JobReport {
        let mut r = pb::JobReport {
            id: id.into(),
            ..Default::default()
        };
        r.set_state(state);
        r
    }

    fn ids(rx: &watch::Receiver<Arc<pb::JobSet>>) -> Vec<String> {
        rx.borrow().jobs.iter().map(|j| j.id.clone()).collect()
    }

    #[test]
    fn a_job_reaches_only_its_nodes_and_leaves_with_the_outcome() {
        let jobs = Jobs::default();
        let (a, _ga) = jobs.subscribe("a");
        let (b, _gb) = jobs.subscribe("b");
        let h = jobs.submit(job("j1"), &["a".into()]);
        assert_eq!(ids(&a), ["j1"]);
        assert!(ids(&b).is_empty());
        assert_eq!(
            jobs.report("b", report("j1", pb::JobState::Succeeded)),
            Err(ReportRefusal::NotTarget {
                id: "j1".into(),
                node: "b".into()
            })
        );
        jobs.report("a", report("j1", pb::JobState::Downloading))
            .unwrap();
        assert_eq!(ids(&a), ["j1"]);
        jobs.report("a", report("j1", pb::JobState::Succeeded))
            .unwrap();
        assert!(ids(&a).is_empty());
        // The first outcome wins; a repeated or late one changes nothing.
        jobs.report("a", report("j1", pb::JobState::Failed))
            .unwrap();
        assert_eq!(h.status.borrow()["a"].state(), pb::JobState::Succeeded);
        drop(h);
        assert!(matches!(
            jobs.report("a", report("j1", pb::JobState::Failed)),
            Err(ReportRefusal::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn only_the_target_node_sends_output_and_only_while_someone_reads_it() {
        let jobs = Jobs::default();
        let plain = jobs.submit(job("plain"), &["a".into()]);
        let (h, mut rx) = jobs.submit_with_output(job("j1"), "a");
        // The other node's output, a job that has none, an unknown job: refused.
        assert_eq!(
            jobs.output("b", "j1").unwrap_err(),
            ReportRefusal::NotTarget {
                id: "j1".into(),
                node: "b".into()
            }
        );
        assert_eq!(
            jobs.output("a", "plain").unwrap_err(),
            ReportRefusal::NoOutput("plain".into())
        );
        assert!(matches!(
            jobs.output("a", "nope"),
            Err(ReportRefusal::Unknown(_))
        ));
        let tx = jobs.output("a", "j1").unwrap();
        tx.send(b"line 1\n".to_vec()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"line 1\n");
        // The reader is bounded: a node cannot run ahead of it.
        for _ in 0..OUTPUT_BUFFER {
            tx.try_send(vec![0]).unwrap();
        }
        assert!(tx.try_send(vec![0]).is_err());
        // Once the reader is gone the job is too, and sending fails.
        drop((h, rx, plain));
        assert!(tx.send(vec![1]).await.is_err());
        assert!(matches!(
            jobs.output("a", "j1"),
            Err(ReportRefusal::Unknown(_))
        ));
    }

    #[test]
    fn a_job_is_handed_out_a_bounded_number_of_times() {
        let jobs = Jobs::default();
        let h = jobs.submit(job("j"), &["a".into()]);
        for _ in 0..MAX_DELIVERIES {
            let (rx, guard) = jobs.subscribe("a");
            assert_eq!(ids(&rx), ["j"]);
            assert!(jobs.connected("a"));
            drop(guard);
            assert!(!jobs.connected("a"));
        }
        let (rx, _g) = jobs.subscribe("a");
        assert!(ids(&rx).is_empty(), "not handed out again");
        let s = h.status.borrow()["a"].clone();
        assert_eq!(s.state(), pb::JobState::Failed);
        assert!(s.message.contains("restarted"), "{}", s.message);
    }

    #[test]
    fn dropping_the_handle_cancels_and_closing_a_node_fails_its_part() {
        let jobs = Jobs::default();
        let (a, _g) = jobs.subscribe("a");
        let h = jobs.submit(job("j"), &["a".into(), "b".into()]);
        jobs.close("b", "node b was removed");
        assert_eq!(h.status.borrow()["b"].message, "node b was removed");
        assert_eq!(ids(&a), ["j"]);
        drop(h);
        assert!(ids(&a).is_empty());
    }
}
