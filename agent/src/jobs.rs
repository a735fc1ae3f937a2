//! One-shot jobs from the controller (`NodeService/WatchJobs`): loading an image archive
//! into the node's containerd, replacing etcd's data with a restored data directory, and
//! reading the node's journal.
//!
//! The controller sends the node's outstanding jobs as a set, now and whenever it changes
//! (the set is level-triggered, like the assignment: a reconnect sends it whole). [`Jobs`]
//! starts a task for each job it has not seen, stops the tasks of jobs that left the set
//! (cancelled or timed out on the controller), and sends an outcome again when a job it
//! already finished is still in the set (its report was lost). Jobs are kept in memory
//! only: after a restart of the agent the controller hands an unfinished job out again, a
//! bounded number of times (`controller/src/jobs.rs`); loading an image twice is harmless.
//!
//! An image load fetches the archive from the controller's mirror through the artifact
//! pipeline (streamed, size-limited, digest-checked before anything reads it) into the
//! job's own directory, then runs `ctr -n <namespace> images import` on it through a
//! [`CommandRunner`], and removes the directory whatever happened.
//!
//! An etcd restore fetches the restored data directory (a `.tar.gz`) the same way, unpacks
//! it beside etcd's data directory (every file synced), stops etcd, keeps the old directory
//! under a `.before-restore-<unix time>` name, renames the new one into place and starts
//! etcd again. Until the rename nothing of the old data is touched, so a failure before it
//! leaves etcd as it was (started again).
//!
//! A journal read runs `journalctl` ([`pb::JournalRead::args`]) through the
//! [`CommandRunner`] and streams its output to the controller (`SendJobOutput`) as it
//! comes. When the controller ends that stream (nobody reads any more) or the job leaves
//! the set, `journalctl` is killed.

use crate::artifact::MirrorSource;
use crate::command::CommandRunner;
use pangaea_artifact::{ArtifactSpec, Digest, Fetcher, MirrorUrl};
use pangaea_proto as pb;
use pangaea_proto::journal::JOURNALCTL;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

/// The largest archive an agent loads (the artifact pipeline's limit for a download).
pub const MAX_ARCHIVE_BYTES: u64 = pangaea_artifact::DEFAULT_MAX_SIZE;

/// Where `ctr` may be: the pinned release installs it in `/usr/local/bin`, a distribution's
/// package in `/usr/bin`. The first that exists is used.
pub const CTR_PATHS: [&str; 2] = ["/usr/local/bin/ctr", "/usr/bin/ctr"];

/// The most output one `SendJobOutput` message carries.
const OUTPUT_CHUNK: usize = 64 * 1024;

/// How often a running download's progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What a job needs from the agent.
struct Context {
    /// The node's root (`/` on a node; a temporary directory in tests).
    root: PathBuf,
    /// Where jobs keep their files: one subdirectory per job, removed when it ends.
    dir: PathBuf,
    fetcher: Arc<Fetcher>,
    commands: Arc<dyn CommandRunner>,
    /// The channel to the controller of the current session (output goes back on it).
    controller: MirrorSource,
}

/// The agent's jobs: the running ones and the outcomes still owed to the controller.
pub struct Jobs {
    ctx: Arc<Context>,
    running: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Outcomes of jobs still in the controller's set.
    finished: HashMap<String, pb::JobReport>,
    reports: mpsc::UnboundedSender<pb::JobReport>,
}

impl Jobs {
    /// Jobs whose files go below `dir` (emptied now: what is there is left from a previous
    /// life of the agent), whose reports, progress and outcomes, go to `reports`, and whose
    /// output goes to the controller over `controller`'s channel.
    pub fn new(
        root: &Path,
        dir: &Path,
        fetcher: Arc<Fetcher>,
        commands: Arc<dyn CommandRunner>,
        controller: MirrorSource,
        reports: mpsc::UnboundedSender<pb::JobReport>,
    ) -> Jobs {
        let stale = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&stale)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %stale.display(), error = %e, "cannot remove old job files");
            }
        });
        Jobs {
            ctx: Arc::new(Context {
                root: root.to_owned(),
                dir: dir.to_owned(),
                fetcher,
                commands,
                controller,
            }),
            running: HashMap::new(),
            finished: HashMap::new(),
            reports,
        }
    }

    /// Takes the controller's current set: starts new jobs, stops those that left it.
    /// Returns the outcomes to send again (jobs finished here but still in the set).
    pub fn update(&mut self, set: pb::JobSet) -> Vec<pb::JobReport> {
        let wanted: HashSet<&str> = set.jobs.iter().map(|j| j.id.as_str()).collect();
        self.running.retain(|id, task| {
            let keep = wanted.contains(id.as_str()) && !task.is_finished();
            if !keep && !task.is_finished() {
                tracing::info!(job = %id, "job cancelled by the controller");
                task.abort();
            }
            keep
        });
        self.finished.retain(|id, _| wanted.contains(id.as_str()));
        let mut again = Vec::new();
        for job in set.jobs {
            if let Some(r) = self.finished.get(&job.id) {
                again.push(r.clone());
            } else if !self.running.contains_key(&job.id) {
                let id = job.id.clone();
                let (ctx, tx) = (self.ctx.clone(), self.reports.clone());
                let span = tracing::info_span!("job", id = %id);
                self.running
                    .insert(id, tokio::spawn(run(ctx, job, tx).instrument(span)));
            }
        }
        again
    }

    /// Notes a report on its way to the controller; an outcome is kept until the job
    /// leaves the controller's set.
    pub fn note(&mut self, r: &pb::JobReport) {
        if is_final(r) {
            self.running.remove(&r.id);
            self.finished.insert(r.id.clone(), r.clone());
        }
    }
}

fn is_final(r: &pb::JobReport) -> bool {
    matches!(r.state(), pb::JobState::Succeeded | pb::JobState::Failed)
}

fn report(id: &str, state: pb::JobState) -> pb::JobReport {
    let mut r = pb::JobReport {
        id: id.to_owned(),
        ..Default::default()
    };
    r.set_state(state);
    r
}

/// A report in `state` with all `size` bytes of the job's download done.
fn sized(id: &str, state: pb::JobState, size: u64) -> pb::JobReport {
    let mut r = report(id, state);
    r.bytes_done = size;
    r.bytes_total = size;
    r
}

/// The path of `file` in job `id`'s own directory, and the guard that removes the directory
/// (and the download's progress entry) when the job ends.
fn job_file(ctx: &Context, id: &str, file: &str) -> (PathBuf, Cleanup) {
    let dir = ctx.dir.join(id);
    let path = dir.join(file);
    let cleanup = Cleanup {
        dir,
        dest: path.clone(),
        fetcher: ctx.fetcher.clone(),
    };
    (path, cleanup)
}

fn failed(id: &str, message: String) -> pb::JobReport {
    let mut r = report(id, pb::JobState::Failed);
    r.message = message;
    r
}

/// Runs one job to its outcome, which it sends last.
async fn run(ctx: Arc<Context>, job: pb::Job, tx: mpsc::UnboundedSender<pb::JobReport>) {
    let id = job.id.clone();
    let timeout = Duration::from_secs(job.timeout_seconds.max(1));
    let outcome = match job.kind {
        Some(kind) => {
            let work = async {
                match &kind {
                    pb::job::Kind::ImageLoad(load) => image_load(&ctx, &id, load, &tx).await,
                    pb::job::Kind::EtcdRestore(r) => etcd_restore(&ctx, &id, r, &tx).await,
                    pb::job::Kind::JournalRead(r) => journal_read(&ctx, &id, r).await,
                }
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => failed(
                    &id,
                    format!("timed out after {} s on the node", timeout.as_secs()),
                ),
            }
        }
        None => failed(
            &id,
            "this agent does not know the job's kind (an older agent than the controller?)".into(),
        ),
    };
    match outcome.state() {
        pb::JobState::Succeeded if outcome.images.is_empty() => tracing::info!("job succeeded"),
        pb::JobState::Succeeded => tracing::info!(images = ?outcome.images, "job succeeded"),
        _ => tracing::warn!(error = %outcome.message, "job failed"),
    }
    let _ = tx.send(outcome);
}

/// Reads the node's journal as `read` says and streams it to the controller; the outcome
/// is journalctl's (its standard error when it refuses).
async fn journal_read(ctx: &Context, id: &str, read: &pb::JournalRead) -> pb::JobReport {
    use tokio_stream::StreamExt;
    let Some(channel) = ctx.controller.channel() else {
        return failed(id, "not connected to the controller".into());
    };
    let mut client = pb::node_service_client::NodeServiceClient::new(channel);
    let (out, rx) = mpsc::channel::<Vec<u8>>(4);
    let job = id.to_owned();
    // The first message names the job even when there is no output at all; output comes
    // in messages of at most OUTPUT_CHUNK bytes, well under what the controller accepts.
    let output =
        tokio_stream::once(Vec::new()).chain(tokio_stream::wrappers::ReceiverStream::new(rx));
    let chunks = futures_util::StreamExt::flat_map(output, |data: Vec<u8>| {
        let pieces: Vec<Vec<u8>> = if data.len() <= OUTPUT_CHUNK {
            vec![data]
        } else {
            data.chunks(OUTPUT_CHUNK).map(<[u8]>::to_vec).collect()
        };
        tokio_stream::iter(pieces)
    })
    .map(move |data| pb::JobOutput {
        id: job.clone(),
        data,
    });
    let send = client.send_job_output(chunks);
    let args = read.args();
    let command = ctx.commands.stream(Path::new(JOURNALCTL), &args, out);
    tokio::pin!(send, command);
    // journalctl ends first (its output then ends the stream, and the call returns), or
    // the controller ends the call (nobody reads any more) and journalctl is dropped:
    // killed.
    let mut ran = None;
    let sent = loop {
        tokio::select! {
            r = &mut command, if ran.is_none() => ran = Some(r),
            r = &mut send => break r,
        }
    };
    if let Err(s) = sent {
        return failed(
            id,
            format!("the controller stopped taking the output: {}", s.message()),
        );
    }
    let ran = match ran {
        Some(r) => r,
        None => command.await,
    };
    match ran {
        Err(e) => failed(id, format!("cannot run {JOURNALCTL}: {e}")),
        Ok(o) if !o.status.success() => failed(
            id,
            format!(
                "{JOURNALCTL} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Ok(_) => report(id, pb::JobState::Succeeded),
    }
}

/// Removes a job's directory and its download's progress entry when the job ends, however
/// it ends (an aborted task included).
struct Cleanup {
    dir: PathBuf,
    dest: PathBuf,
    fetcher: Arc<Fetcher>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let dest = self.dest.clone();
        self.fetcher.progress().retain(|p| p != dest.as_path());
        // One small directory: removing it is not worth a trip to the blocking pool, and
        // the blocking pool may be gone when the runtime shuts down.
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove job files");
        }
    }
}

/// The `ctr` binary of the node under `root`, or why there is none.
pub fn find_ctr(root: &Path) -> Result<PathBuf, String> {
    CTR_PATHS
        .iter()
        .map(|p| root.join(p.trim_start_matches('/')))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "containerd's ctr is not installed on this node (looked for {}): is containerd part of the node's assignment (`pangaea-ctl status`)?",
                CTR_PATHS.join(", ")
            )
        })
}

/// The image references `ctr images import` says it imported: `unpacking NAME (sha256:…)`
/// (containerd 1.x) or `NAME saved` (2.x).
pub fn imported_images(stdout: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in stdout.lines() {
        let name = if let Some(rest) = line.strip_prefix("unpacking ") {
            rest.split_whitespace().next()
        } else {
            line.strip_suffix(" saved").map(str::trim)
        };
        if let Some(n) = name.filter(|n| !n.is_empty())
            && !out.iter().any(|o| o == n)
        {
            out.push(n.to_owned());
        }
    }
    out
}

fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 76
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Fetches `digest` (`size` bytes) from the controller's mirror to `dest` through the
/// artifact pipeline, reporting the download's progress.
async fn fetch(
    ctx: &Context,
    id: &str,
    digest: Digest,
    size: u64,
    dest: &Path,
    tx: &mpsc::UnboundedSender<pb::JobReport>,
) -> Result<(), String> {
    let spec = ArtifactSpec {
        url: MirrorUrl::new(digest.clone()).to_string(),
        digest,
        dest: dest.to_owned(),
        mode: 0o600,
        members: vec![],
    };
    let mut downloading = report(id, pb::JobState::Downloading);
    downloading.bytes_total = size;
    let _ = tx.send(downloading.clone());
    let install = ctx.fetcher.install(&spec);
    tokio::pin!(install);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let installed = loop {
        tokio::select! {
            r = &mut install => break r,
            _ = tick.tick() => {
                if let Some(s) = ctx.fetcher.progress().get(dest)
                    && s.bytes_done != downloading.bytes_done
                {
                    downloading.bytes_done = s.bytes_done;
                    let _ = tx.send(downloading.clone());
                }
            }
        }
    };
    installed
        .map(drop)
        .map_err(|e| format!("fetch the archive from the controller: {e}"))
}

/// Replaces etcd's data with the restored data directory of `r` (see the module
/// documentation).
async fn etcd_restore(
    ctx: &Context,
    id: &str,
    r: &pb::EtcdRestore,
    tx: &mpsc::UnboundedSender<pb::JobReport>,
) -> pb::JobReport {
    let fail = |m: String| failed(id, m);
    let digest = match Digest::parse(&r.digest) {
        Ok(d) => d,
        Err(e) => return fail(format!("the data archive's digest: {e}")),
    };
    let data_dir = Path::new(&r.data_dir);
    // A directory below a directory below `/` (`/var/lib/etcd`): never `/` itself or a
    // top-level one, whose parent would be the root.
    let plain = data_dir.is_absolute()
        && data_dir.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
        && data_dir.components().count() >= 3;
    if !plain || !r.unit.ends_with(".service") || r.unit.contains('/') {
        return fail(format!(
            "refused: data directory {:?} or unit {:?} is not a plain absolute path and a service",
            r.data_dir, r.unit
        ));
    }
    let data = ctx.root.join(data_dir.strip_prefix("/").expect("absolute"));
    let parent = data.parent().expect("absolute, not /").to_owned();
    let (archive, _cleanup) = job_file(ctx, id, "data.tar.gz");
    if let Err(e) = fetch(ctx, id, digest, r.size, &archive, tx).await {
        return fail(e);
    }
    let _ = tx.send(sized(id, pb::JobState::Importing, r.size));

    // Unpacked beside the data directory (same filesystem: the rename is atomic).
    let name = data
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let staged = parent.join(format!(".{name}.restoring-{id}"));
    let unpacked = {
        let (archive, staged) = (archive.clone(), staged.clone());
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&staged);
            pangaea_artifact::tree::unpack(&archive, &staged)
        })
        .await
    };
    match unpacked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return fail(format!("unpack the restored data: {e}")),
        Err(e) => return fail(format!("unpack the restored data: {e}")),
    }
    let systemctl = |verb: &'static str| {
        let unit = r.unit.clone();
        async move {
            let out = ctx
                .commands
                .run(Path::new("systemctl"), &[verb.to_owned(), unit.clone()])
                .await
                .map_err(|e| format!("systemctl {verb} {unit}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "systemctl {verb} {unit} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
    };
    if let Err(e) = systemctl("stop").await {
        let _ = std::fs::remove_dir_all(&staged);
        return fail(e);
    }
    let kept = parent.join(format!(
        "{name}.before-restore-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    let swapped = (|| -> std::io::Result<()> {
        match std::fs::rename(&data, &kept) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::rename(&staged, &data)?;
        std::fs::File::open(&parent)?.sync_all()
    })();
    let started = systemctl("start").await;
    if let Err(e) = swapped {
        let _ = std::fs::remove_dir_all(&staged);
        return fail(format!(
            "put the restored data in place at {}: {e}",
            data.display()
        ));
    }
    if let Err(e) = started {
        return fail(format!("the restored data is in place, but {e}"));
    }
    tracing::info!(data = %data.display(), kept = %kept.display(), "etcd data restored");
    sized(id, pb::JobState::Succeeded, r.size)
}

async fn image_load(
    ctx: &Context,
    id: &str,
    load: &pb::ImageLoad,
    tx: &mpsc::UnboundedSender<pb::JobReport>,
) -> pb::JobReport {
    let fail = |m: String| failed(id, m);
    let digest = match Digest::parse(&load.digest) {
        Ok(d) => d,
        Err(e) => return fail(format!("the archive's digest: {e}")),
    };
    if load.size > MAX_ARCHIVE_BYTES {
        return fail(format!(
            "the archive is {} bytes, more than the {MAX_ARCHIVE_BYTES} bytes an agent loads",
            load.size
        ));
    }
    if !valid_namespace(&load.namespace) {
        return fail(format!(
            "{:?} is not a containerd namespace",
            load.namespace
        ));
    }
    let ctr = match find_ctr(&ctx.root) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };

    // 1. The archive, from the controller's mirror, digest-checked before it is used.
    let (dest, _cleanup) = job_file(ctx, id, "archive.tar");
    if let Err(e) = fetch(ctx, id, digest, load.size, &dest, tx).await {
        return fail(e);
    }

    // 2. containerd imports it, into the namespace the kubelet reads.
    let _ = tx.send(sized(id, pb::JobState::Importing, load.size));
    let args: Vec<String> = vec![
        "-n".into(),
        load.namespace.clone(),
        "images".into(),
        "import".into(),
        // An image the archive does not name is kept under its digest, not dropped; a
        // named one only under its name.
        "--digests".into(),
        "--skip-digest-for-named".into(),
        dest.display().to_string(),
    ];
    let shown = format!("{} -n {} images import", ctr.display(), load.namespace);
    let out = match ctx.commands.run(&ctr, &args).await {
        Ok(o) => o,
        Err(e) => return fail(format!("{shown}: cannot run it: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = if stderr.trim().is_empty() {
            stdout.trim()
        } else {
            stderr.trim()
        };
        return fail(format!("{shown} failed ({}): {said}", out.status));
    }
    let mut done = sized(id, pb::JobState::Succeeded, load.size);
    done.images = imported_images(&stdout);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_images_are_read_from_ctr_of_either_major_version() {
        let v1 = "unpacking docker.io/local/busybox:1 (sha256:0123)...done\nunpacking docker.io/library/pause:3.9 (sha256:4567)...done\n";
        assert_eq!(
            imported_images(v1),
            ["docker.io/local/busybox:1", "docker.io/library/pause:3.9"]
        );
        let v2 = "docker.io/local/busybox:1 saved\napplication/vnd.oci.image.manifest.v1+json sha256:0123\nImporting\telapsed: 0.1 s\n";
        assert_eq!(imported_images(v2), ["docker.io/local/busybox:1"]);
        assert!(imported_images("").is_empty());
    }

    #[test]
    fn ctr_is_looked_for_where_the_release_and_the_package_put_it() {
        let root = tempfile::tempdir().unwrap();
        let err = find_ctr(root.path()).unwrap_err();
        assert!(err.contains("/usr/local/bin/ctr, /usr/bin/ctr"), "{err}");
        std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        std::fs::write(root.path().join("usr/bin/ctr"), "").unwrap();
        assert_eq!(
            find_ctr(root.path()).unwrap(),
            root.path().join("usr/bin/ctr")
        );
        std::fs::create_dir_all(root.path().join("usr/local/bin")).unwrap();
        std::fs::write(root.path().join("usr/local/bin/ctr"), "").unwrap();
        assert_eq!(
            find_ctr(root.path()).unwrap(),
            root.path().join("usr/local/bin/ctr")
        );
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(valid_namespace("k8s.io"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("a b"));
        assert!(!valid_namespace("../x"));
    }
}
