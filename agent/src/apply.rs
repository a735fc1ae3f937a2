//! Applying an assignment to the node.
//!
//! Order matters for a node that must keep running. Before anything changes, the revision is
//! recorded as *pending* in the state directory (see [`PendingApply`]). Then artifacts are
//! installed (they are what most often fails — network, disk — and a failure then changes
//! nothing else); units the new revision drops are stopped; files are replaced atomically
//! (each one old or new, never torn); files the new revision drops are removed; systemd
//! reloads when a unit file changed; then new units start and units whose files changed
//! restart — only those. The applied revision is recorded on disk last, and the pending
//! record dropped after it, so a crash anywhere re-applies the whole revision at the next
//! start, which is idempotent.
//!
//! "Changed" is measured against the last *applied* revision (the recorded one), not only
//! against the disk: a file that an earlier, failed attempt already wrote is unchanged on
//! disk, yet the units reading it have not been restarted, nor systemd reloaded. A failed
//! `daemon-reload`, start or restart fails the apply, so the revision is not recorded as applied and the next attempt
//! does it again; the pending record remembers which units an attempt already restarted or
//! stopped, so that a retry does only what is still owed.
//!
//! The agent's runtime has one thread; reading, writing, fsyncing and renaming files run on
//! tokio's blocking pool, one step at a time, so that reports keep flowing during an apply
//! without changing the order above.

use crate::artifact;
use crate::blocking;
use crate::service_manager::ServiceManager;
use pangaea_artifact::Fetcher;
use pangaea_core::fsutil;
use pangaea_proto as pb;
use prost::Message;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why an assignment was not applied (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The assignment is refused before anything changes (bad path, mode or unit name).
    #[error("assignment revision {revision} is invalid: {message}")]
    Invalid {
        /// The refused revision.
        revision: u64,
        /// What is wrong with it.
        message: String,
    },
    /// Writing or removing a file failed.
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
    /// An artifact could not be installed.
    #[error(transparent)]
    Artifact(#[from] pangaea_artifact::FetchError),
    /// A `daemon-reload`, start or restart failed: the revision is not recorded as applied,
    /// and the next attempt does what is still owed.
    #[error("assignment revision {revision} not applied: {}", .errors.join("; "))]
    UnitActions {
        /// The revision being applied.
        revision: u64,
        /// The unit operations that failed, with everything else that went wrong in this
        /// attempt.
        errors: Vec<String>,
    },
    /// The record of the last applied assignment cannot be read.
    #[error(
        "last applied assignment {path} is unreadable ({message}); it will be replaced by the controller's"
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// Why it is unreadable.
        message: String,
    },
}

/// What one apply did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// The revision applied.
    pub revision: u64,
    /// Paths written (files, and artifacts with their archive members).
    pub changed: Vec<String>,
    /// Paths the revision dropped, removed.
    pub removed: Vec<String>,
    /// Units started (new ones, or all at boot).
    pub started: Vec<String>,
    /// Units restarted because their unit file or a `restart_on_change` path changed.
    pub restarted: Vec<String>,
    /// Units the revision dropped, stopped and disabled.
    pub stopped: Vec<String>,
    /// What failed without failing the apply: artifact installs (then `incomplete`), stopping
    /// a dropped unit, setting a file's owner. Everything else is in place. (A failed
    /// `daemon-reload`, start or restart fails the apply instead: [`ApplyError::UnitActions`].)
    pub errors: Vec<String>,
    /// Units deliberately not started (reported as such, not as errors).
    pub skipped: Vec<SkippedUnit>,
    /// Some artifact could not be installed (the assignment should be applied again later).
    pub incomplete: bool,
}

/// A unit the agent deliberately did not start, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedUnit {
    /// e.g. `kube-apiserver.service`.
    pub unit: String,
    /// Why it was not started.
    pub reason: pb::NotRunningReason,
    /// What the reason is about: for `ProgramNotInstalled`, the missing program's path.
    pub detail: String,
}

/// `kube-apiserver.service not started: /usr/local/bin/kube-apiserver is not installed (…)`
impl std::fmt::Display for SkippedUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            pb::NotRunningReason::ProgramNotInstalled => write!(
                f,
                "{} not started: {} is not installed (its artifact is disabled or could not be downloaded)",
                self.unit, self.detail
            ),
            pb::NotRunningReason::Unspecified => write!(f, "{} not started", self.unit),
        }
    }
}

/// Applies assignments under a root directory, through a service manager, keeping the
/// record of the last applied one in the state directory.
pub struct Applier {
    root: PathBuf,
    state_file: PathBuf,
    pending_file: PathBuf,
    units: Arc<dyn ServiceManager>,
    fetcher: Arc<Fetcher>,
}

/// The record of an apply that has started and not yet finished: `pending-apply.json` in the
/// state directory, written (atomically) before the apply changes anything, rewritten with
/// the attempt's progress when it fails, and removed once the revision is recorded as
/// applied. A leftover record (a crash between those two steps) is harmless: its progress
/// is only used for the very same assignment, and it only ever spares repeated actions.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingApply {
    /// The revision being applied.
    pub revision: u64,
    /// SHA-256 (hex) of the encoded assignment: progress counts only for the same one.
    pub assignment_sha256: String,
    /// An attempt was the boot-time apply: retries start every unit too.
    pub at_boot: bool,
    /// Units the revision drops that an attempt already stopped.
    pub stopped: BTreeSet<String>,
    /// Units an attempt already restarted, after writing its files: a retry restarts them
    /// again only for a file the retry itself has to write.
    pub restarted: BTreeSet<String>,
}

/// The file name of [`PendingApply`] in the state directory.
pub const PENDING_FILE: &str = "pending-apply.json";

/// What installing the artifacts of an assignment did.
struct Installs {
    /// Destinations (and archive members) written.
    changed: Vec<String>,
    /// Destinations of the artifacts that could not be installed.
    failed: BTreeSet<String>,
    /// Why they could not.
    errors: Vec<String>,
}

const UNIT_SUFFIXES: [&str; 6] = [
    ".service", ".socket", ".timer", ".mount", ".path", ".target",
];

impl Applier {
    /// An applier writing under `root` (`/` on a node) and recording in `state_dir`.
    pub fn new(
        root: &Path,
        state_dir: &Path,
        units: Arc<dyn ServiceManager>,
        fetcher: Arc<Fetcher>,
    ) -> Applier {
        Applier {
            root: root.to_owned(),
            state_file: state_dir.join("applied-assignment.pb"),
            pending_file: state_dir.join(PENDING_FILE),
            units,
            fetcher,
        }
    }

    /// Installs every artifact of `next` (concurrently, bounded by the fetcher). A missing
    /// artifact does not hold back the rest of the node (its units report it instead of
    /// starting).
    async fn install_artifacts(&self, next: &pb::Assignment) -> Result<Installs, ApplyError> {
        let mut tasks = tokio::task::JoinSet::new();
        for a in &next.artifacts {
            let spec = artifact::spec(&self.root, a).map_err(|message| ApplyError::Invalid {
                revision: next.revision,
                message,
            })?;
            let (fetcher, a) = (self.fetcher.clone(), a.clone());
            tasks.spawn(async move { (fetcher.install(&spec).await, a) });
        }
        let mut out = Installs {
            changed: Vec::new(),
            failed: BTreeSet::new(),
            errors: Vec::new(),
        };
        while let Some(r) = tasks.join_next().await {
            match r.expect("artifact task does not panic") {
                (Ok(i), a) if i.changed => {
                    out.changed.push(a.dest.clone());
                    out.changed.extend(a.members.iter().map(|m| m.dest.clone()));
                }
                (Ok(_), _) => {}
                (Err(e), a) => {
                    out.errors.push(e.to_string());
                    out.failed.insert(a.dest);
                }
            }
        }
        out.errors.sort();
        Ok(out)
    }

    /// Writes the pending record (atomically, like every state file).
    async fn save_pending(&self, pending: &PendingApply) -> Result<(), ApplyError> {
        let path = self.pending_file.clone();
        let bytes = serde_json::to_vec_pretty(pending).expect("a pending record serializes");
        blocking::run(move || fsutil::atomic_write(&path, &bytes, 0o600)).await?;
        Ok(())
    }

    /// The last assignment applied completely, if any. Reads the state file: in async code,
    /// call it on the blocking pool.
    pub fn last_applied(&self) -> Result<Option<pb::Assignment>, ApplyError> {
        read_last_applied(&self.state_file)
    }

    fn target(&self, path: &str) -> PathBuf {
        target(&self.root, path)
    }

    /// Applies `next`. With `at_boot`, every unit is (re)started even if nothing changed,
    /// which is how a rebooted node brings its services up before the controller answers.
    /// After a failed attempt, the next one does whatever the failed one still owed (see the
    /// module documentation) — for a boot-time attempt, starting every unit.
    ///
    /// Each filesystem step runs on the blocking pool (see `blocking`) and is awaited before
    /// the next one starts, so the order of the module documentation holds exactly.
    pub async fn apply(&self, next: &pb::Assignment, at_boot: bool) -> Result<Applied, ApplyError> {
        validate(next)?;
        let record = next.encode_to_vec();
        let (prev, pending, record, digest) = {
            let targets: Vec<PathBuf> = destinations(next).map(|p| self.target(p)).collect();
            let (state_file, pending_file) = (self.state_file.clone(), self.pending_file.clone());
            blocking::run(move || {
                sweep_leftovers(&targets);
                let digest = hex::encode(Sha256::digest(&record));
                let prev = read_last_applied(&state_file);
                (prev, read_pending(&pending_file), record, digest)
            })
            .await
        };
        let prev = prev.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring unreadable last applied assignment");
            None
        });
        let prev = prev.unwrap_or_default();
        let mut pending = match pending {
            Some(p) if p.revision == next.revision && p.assignment_sha256 == digest => {
                tracing::info!(
                    revision = p.revision,
                    restarted = ?p.restarted,
                    stopped = ?p.stopped,
                    "resuming an apply that did not finish"
                );
                p
            }
            _ => PendingApply {
                revision: next.revision,
                assignment_sha256: digest,
                ..Default::default()
            },
        };
        pending.at_boot |= at_boot;
        self.save_pending(&pending).await?;

        match self.apply_steps(next, &prev, &mut pending, record).await {
            Ok(done) => {
                let pending_file = self.pending_file.clone();
                if let Err(e) = blocking::run(move || fsutil::remove_durably(&pending_file)).await {
                    // Harmless: the revision is recorded, and the record's progress only
                    // ever spares a retry of this very assignment some actions.
                    tracing::warn!(error = %e, "cannot remove the pending apply record");
                }
                Ok(done)
            }
            Err(e) => {
                // Best effort: without the progress, a retry only repeats some actions.
                if let Err(w) = self.save_pending(&pending).await {
                    tracing::warn!(error = %w, "cannot record the progress of a failed apply");
                }
                Err(e)
            }
        }
    }

    /// Everything after writing the pending record, up to recording `next` (encoded as
    /// `record`) as applied; notes in `pending` the units it stopped and restarted.
    async fn apply_steps(
        &self,
        next: &pb::Assignment,
        prev: &pb::Assignment,
        pending: &mut PendingApply,
        record: Vec<u8>,
    ) -> Result<Applied, ApplyError> {
        let at_boot = pending.at_boot;
        let installs = self.install_artifacts(next).await?;
        let mut done = Applied {
            revision: next.revision,
            changed: installs.changed,
            incomplete: !installs.errors.is_empty(),
            errors: installs.errors,
            ..Default::default()
        };

        let next_units: BTreeSet<&str> = next.units.iter().map(|u| u.name.as_str()).collect();
        for u in prev
            .units
            .iter()
            .filter(|u| !next_units.contains(u.name.as_str()))
        {
            if pending.stopped.contains(&u.name) {
                continue;
            }
            match self.units.remove(&u.name).await {
                Ok(()) => {
                    done.stopped.push(u.name.clone());
                    pending.stopped.insert(u.name.clone());
                }
                Err(e) => done.errors.push(e.to_string()),
            }
        }

        // Every file is replaced atomically, several at once: each write ends with two
        // fsyncs, and concurrent ones share the filesystem's journal commits (64 files one
        // after the other took about half a second on a node). All are done before the next
        // step, as before.
        let (root, files) = (self.root.clone(), next.files.clone());
        let written = blocking::run(move || write_files(&root, &files)).await?;
        for (f, (changed, owner_errors)) in next.files.iter().zip(written) {
            if changed {
                done.changed.push(f.path.clone());
            }
            done.errors.extend(owner_errors);
        }

        let keep: BTreeSet<&str> = destinations(next).map(String::as_str).collect();
        let gone: Vec<String> = destinations(prev)
            .filter(|p| !keep.contains(p.as_str()))
            .cloned()
            .collect();
        let targets: Vec<PathBuf> = gone.iter().map(|p| self.target(p)).collect();
        blocking::run(move || targets.iter().try_for_each(|t| fsutil::remove_durably(t))).await?;
        done.removed.extend(gone);

        // Two measures of "changed": what this attempt wrote (the disk differed: always acted
        // on), and what the revision changes relative to the last applied one, removals
        // included (acted on unless an earlier attempt at this revision already did).
        let written: BTreeSet<&str> = done.changed.iter().map(String::as_str).collect();
        let mut planned = changed_since(prev, next, &installs.failed);
        planned.extend(done.removed.iter().cloned());
        let is_unit_file = |p: &str| UNIT_SUFFIXES.iter().any(|s| p.ends_with(s));
        let reload = written
            .iter()
            .copied()
            .chain(planned.iter().map(String::as_str))
            .any(is_unit_file)
            || (at_boot && !next.units.is_empty());
        if reload && let Err(e) = self.units.daemon_reload().await {
            // Units started or restarted on stale unit files would count as done: they wait
            // for the next attempt.
            return Err(unit_actions_failed(
                next.revision,
                vec![e.to_string()],
                done.errors,
            ));
        }
        let missing = {
            let (root, names): (PathBuf, Vec<String>) = (
                self.root.clone(),
                next.units.iter().map(|u| u.name.clone()).collect(),
            );
            blocking::run(move || {
                names
                    .into_iter()
                    .filter_map(|n| missing_program(&root, &n).map(|p| (n, p)))
                    .collect::<BTreeMap<String, String>>()
            })
            .await
        };
        let prev_units: BTreeSet<&str> = prev.units.iter().map(|u| u.name.as_str()).collect();
        // The starts and restarts run at once: systemd orders them by the units' own
        // dependencies, and one slow start (etcd waiting for its peers) holds back no other.
        let mut actions = tokio::task::JoinSet::new();
        for u in &next.units {
            let own_file = format!("/{}", u.name);
            let touches =
                |p: &str| p.ends_with(&own_file) || u.restart_on_change.iter().any(|d| d == p);
            let written_now = written.iter().any(|p| touches(p));
            let owed = planned.iter().any(|p| touches(p)) && !pending.restarted.contains(&u.name);
            if let Some(program) = missing.get(&u.name).cloned() {
                done.skipped.push(SkippedUnit {
                    unit: u.name.clone(),
                    reason: pb::NotRunningReason::ProgramNotInstalled,
                    detail: program,
                });
                continue;
            }
            let (units, name, enable) = (self.units.clone(), u.name.clone(), u.enable);
            if !prev_units.contains(u.name.as_str()) || at_boot {
                done.started.push(u.name.clone());
                actions
                    .spawn(async move { (name.clone(), false, units.start(&name, enable).await) });
            } else if written_now || owed {
                done.restarted.push(u.name.clone());
                actions.spawn(async move { (name.clone(), true, units.restart(&name).await) });
            }
        }
        let mut failed = Vec::new();
        for (name, restart, result) in actions.join_all().await {
            match result {
                Ok(()) if restart => {
                    pending.restarted.insert(name);
                }
                Ok(()) => {}
                Err(e) => failed.push(e.to_string()),
            }
        }
        failed.sort();
        if !failed.is_empty() {
            return Err(unit_actions_failed(next.revision, failed, done.errors));
        }

        let state_file = self.state_file.clone();
        blocking::run(move || fsutil::atomic_write(&state_file, &record, 0o600)).await?;
        Ok(done)
    }
}

/// The error of an attempt whose unit operations `failed`; `other` is what else went wrong.
fn unit_actions_failed(revision: u64, mut failed: Vec<String>, other: Vec<String>) -> ApplyError {
    failed.extend(other);
    ApplyError::UnitActions {
        revision,
        errors: failed,
    }
}

/// The paths `next` changes relative to `prev` (the last applied revision), whatever the
/// disk holds now: files that are new or whose content or mode differ, and the destinations
/// (with archive members) of artifacts that are new or differ — except those in `failed`,
/// which this attempt could not install.
fn changed_since(
    prev: &pb::Assignment,
    next: &pb::Assignment,
    failed: &BTreeSet<String>,
) -> BTreeSet<String> {
    let files: BTreeMap<&str, &pb::File> =
        prev.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let artifacts: BTreeMap<&str, &pb::Artifact> = prev
        .artifacts
        .iter()
        .map(|a| (a.dest.as_str(), a))
        .collect();
    let mut out = BTreeSet::new();
    for f in &next.files {
        if files
            .get(f.path.as_str())
            .is_none_or(|p| p.content != f.content || p.mode != f.mode)
        {
            out.insert(f.path.clone());
        }
    }
    for a in &next.artifacts {
        if !failed.contains(&a.dest) && artifacts.get(a.dest.as_str()) != Some(&a) {
            out.insert(a.dest.clone());
            out.extend(a.members.iter().map(|m| m.dest.clone()));
        }
    }
    out
}

/// The pending record, if there is a readable one (an unreadable one is ignored: without
/// it a retry only repeats some actions).
fn read_pending(path: &Path) -> Option<PendingApply> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable pending apply record");
            return None;
        }
    };
    serde_json::from_slice(&bytes)
        .inspect_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable pending apply record");
        })
        .ok()
}

fn target(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The last assignment applied completely, from the state file, if any.
fn read_last_applied(state_file: &Path) -> Result<Option<pb::Assignment>, ApplyError> {
    let corrupt = |message: String| ApplyError::Corrupt {
        path: state_file.to_owned(),
        message,
    };
    match std::fs::read(state_file) {
        Ok(bytes) => pb::Assignment::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| corrupt(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

/// The program a unit runs, when the assignment's unit file (under `root`) names one that
/// is missing.
fn missing_program(root: &Path, unit: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(target(root, &format!("/etc/systemd/system/{unit}"))).ok()?;
    let exec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))?;
    let program = exec
        .trim_start_matches(['-', '@', '+', '!', ':'])
        .split_whitespace()
        .next()?;
    (program.starts_with('/') && !target(root, program).exists()).then(|| program.to_owned())
}

/// Removes temporary files that an interrupted write (a crash, SIGKILL, power loss) left
/// beside `targets` (the assignment's destinations). They are never the destination itself,
/// so nothing a service reads is affected.
fn sweep_leftovers(targets: &[PathBuf]) {
    let mut by_dir: BTreeMap<&Path, Vec<String>> = BTreeMap::new();
    for target in targets {
        if let (Some(dir), Some(name)) = (target.parent(), target.file_name()) {
            by_dir
                .entry(dir)
                .or_default()
                .push(format!(".{}.", name.to_string_lossy()));
        }
    }
    for (dir, prefixes) in by_dir {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") && prefixes.iter().any(|p| name.starts_with(p)) {
                tracing::info!(path = %e.path().display(), "removing a leftover temporary file");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Replaces each of `files` under `root` atomically where its content or mode differs and
/// sets its owner, on a few threads at once; for each file in order, whether it was written
/// and the ownership errors. Stops at the first write that fails.
fn write_files(
    root: &Path,
    files: &[pb::File],
) -> Result<Vec<(bool, Vec<String>)>, fsutil::FsError> {
    const THREADS: usize = 8;
    let one = |file: &pb::File| {
        let target = target(root, &file.path);
        let changed = !same_file(&target, &file.content, file.mode);
        if changed {
            fsutil::atomic_write(&target, &file.content, file.mode)?;
        }
        let mut errors = Vec::new();
        set_owner(&target, &file.owner, &mut errors);
        Ok((changed, errors))
    };
    let chunk = files.len().div_ceil(THREADS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(one).collect::<Result<Vec<_>, _>>()))
            .collect();
        let mut out = Vec::with_capacity(files.len());
        for h in handles {
            out.extend(h.join().expect("a file writer does not panic")?);
        }
        Ok(out)
    })
}

fn same_file(path: &Path, content: &[u8], mode: u32) -> bool {
    match std::fs::metadata(path) {
        Ok(m)
            if m.is_file()
                && m.len() == content.len() as u64
                && m.permissions().mode() & 0o7777 == mode & 0o7777 =>
        {
            std::fs::read(path).is_ok_and(|c| c == content)
        }
        _ => false,
    }
}

/// Applies `user[:group]` when running as root; elsewhere (tests) ownership is left as is.
fn set_owner(path: &Path, owner: &str, errors: &mut Vec<String>) {
    if owner.is_empty() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let (user, group) = owner.split_once(':').unwrap_or((owner, ""));
    let uid = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid);
    let gid = if group.is_empty() {
        None
    } else {
        nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .map(|g| g.gid)
    };
    if uid.is_none() || (!group.is_empty() && gid.is_none()) {
        errors.push(format!("chown {}: unknown owner {owner:?}", path.display()));
        return;
    }
    if let Err(e) = nix::unistd::chown(path, uid, gid) {
        errors.push(format!("chown {} to {owner}: {e}", path.display()));
    }
}

/// Every path the assignment puts on the node: files, artifacts and archive members.
fn destinations(a: &pb::Assignment) -> impl Iterator<Item = &String> {
    a.files.iter().map(|f| &f.path).chain(
        a.artifacts
            .iter()
            .flat_map(|x| std::iter::once(&x.dest).chain(x.members.iter().map(|m| &m.dest))),
    )
}

/// Refuses paths that could escape the root or are not absolute, duplicate destinations,
/// and unit names that are not plain systemd unit names.
fn validate(a: &pb::Assignment) -> Result<(), ApplyError> {
    let invalid = |message: String| ApplyError::Invalid {
        revision: a.revision,
        message,
    };
    let mut seen = BTreeSet::new();
    for p in destinations(a) {
        let path = Path::new(p);
        if !path.is_absolute()
            || p.contains('\0')
            || p.split('/').any(|seg| seg == "." || seg == "..")
            || path.file_name().is_none()
        {
            return Err(invalid(format!(
                "path {p:?} must be absolute and must not contain '.' or '..'"
            )));
        }
        if !seen.insert(p.as_str()) {
            return Err(invalid(format!("path {p:?} appears twice")));
        }
    }
    for f in &a.files {
        if f.mode > 0o7777 {
            return Err(invalid(format!(
                "mode {:o} of {:?} is not a file mode",
                f.mode, f.path
            )));
        }
    }
    for u in &a.units {
        let ok = !u.name.is_empty()
            && u.name.len() <= 255
            && UNIT_SUFFIXES.iter().any(|s| u.name.ends_with(s))
            && u.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@:\\".contains(&b));
        if !ok {
            return Err(invalid(format!(
                "unit name {:?} is not a systemd unit name",
                u.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_manager::RecordingServiceManager;

    fn fetcher() -> Arc<Fetcher> {
        Arc::new(Fetcher::new(pangaea_artifact::Sources::standard(), 2))
    }

    fn file(path: &str, content: &str) -> pb::File {
        pb::File {
            path: path.into(),
            mode: 0o644,
            owner: String::new(),
            content: content.as_bytes().to_vec(),
        }
    }
    fn unit(name: &str, on: &[&str]) -> pb::Unit {
        pb::Unit {
            name: name.into(),
            enable: true,
            restart_on_change: on.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn applies_changes_restarts_only_changed_units_and_removes_dropped() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let sm = Arc::new(RecordingServiceManager::default());
        let ap = Applier::new(root.path(), state.path(), sm.clone(), fetcher());
        let r1 = pb::Assignment {
            node_name: "n".into(),
            revision: 1,
            files: vec![
                file("/etc/systemd/system/a.service", "A1"),
                file("/etc/systemd/system/b.service", "B1"),
                file("/etc/a.conf", "x"),
                file("/etc/old", "o"),
            ],
            units: vec![unit("a.service", &["/etc/a.conf"]), unit("b.service", &[])],
            ..Default::default()
        };
        let d = ap.apply(&r1, false).await.unwrap();
        assert_eq!(d.started, ["a.service", "b.service"]);
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/a.conf")).unwrap(),
            "x"
        );

        let mut r2 = r1.clone();
        r2.revision = 2;
        r2.files = vec![
            file("/etc/systemd/system/a.service", "A1"),
            file("/etc/systemd/system/b.service", "B1"),
            file("/etc/a.conf", "y"),
        ];
        let d = ap.apply(&r2, false).await.unwrap();
        assert_eq!(d.changed, ["/etc/a.conf"]);
        assert_eq!(d.removed, ["/etc/old"]);
        assert_eq!(d.restarted, ["a.service"]);
        assert!(d.started.is_empty());
        assert!(!root.path().join("etc/old").exists());

        let mut r3 = r2.clone();
        r3.revision = 3;
        r3.units.retain(|u| u.name == "a.service");
        r3.files.retain(|f| !f.path.ends_with("b.service"));
        let d = ap.apply(&r3, false).await.unwrap();
        assert_eq!(d.stopped, ["b.service"]);
        assert!(sm.calls().contains(&"daemon-reload".to_owned()));
        assert_eq!(ap.last_applied().unwrap().unwrap().revision, 3);

        // Re-applying the same revision changes nothing and restarts nothing.
        let d = ap.apply(&r3, false).await.unwrap();
        assert!(d.changed.is_empty() && d.restarted.is_empty() && d.started.is_empty());
    }

    #[tokio::test]
    async fn a_unit_whose_program_is_missing_is_reported_not_started() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let sm = Arc::new(RecordingServiceManager::default());
        let ap = Applier::new(root.path(), state.path(), sm.clone(), fetcher());
        let a = pb::Assignment {
            revision: 1,
            files: vec![
                file(
                    "/etc/systemd/system/kube-apiserver.service",
                    "[Service]\nExecStart=/usr/local/bin/kube-apiserver --v=2\n",
                ),
                file(
                    "/etc/systemd/system/etcd.service",
                    "[Service]\nExecStart=/usr/local/bin/etcd\n",
                ),
                pb::File {
                    path: "/usr/local/bin/etcd".into(),
                    mode: 0o755,
                    owner: String::new(),
                    content: b"#!/bin/sh\n".to_vec(),
                },
            ],
            units: vec![
                unit("kube-apiserver.service", &[]),
                unit("etcd.service", &[]),
            ],
            ..Default::default()
        };
        let d = ap.apply(&a, false).await.unwrap();
        assert_eq!(d.started, ["etcd.service"]);
        assert_eq!(
            d.skipped,
            [SkippedUnit {
                unit: "kube-apiserver.service".into(),
                reason: pb::NotRunningReason::ProgramNotInstalled,
                detail: "/usr/local/bin/kube-apiserver".into(),
            }]
        );
        // Held back on purpose: reported as such (see `health`), not as an error.
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert!(!d.incomplete);
        assert!(!sm.calls().iter().any(|c| c.contains("kube-apiserver")));
    }

    #[tokio::test]
    async fn refuses_paths_outside_the_root_without_touching_anything() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let ap = Applier::new(
            root.path(),
            state.path(),
            Arc::new(RecordingServiceManager::default()),
            fetcher(),
        );
        for bad in ["etc/x", "/etc/../../x", "/etc/./x", "/"] {
            let a = pb::Assignment {
                revision: 1,
                files: vec![file("/etc/ok", "1"), file(bad, "2")],
                ..Default::default()
            };
            assert!(
                matches!(ap.apply(&a, false).await, Err(ApplyError::Invalid { .. })),
                "{bad}"
            );
        }
        let a = pb::Assignment {
            revision: 1,
            units: vec![unit("../x.service", &[])],
            ..Default::default()
        };
        assert!(ap.apply(&a, false).await.is_err());
        assert!(!root.path().join("etc/ok").exists());
        assert!(ap.last_applied().unwrap().is_none());
    }

    struct Setup {
        root: tempfile::TempDir,
        state: tempfile::TempDir,
        sm: Arc<RecordingServiceManager>,
        ap: Applier,
    }

    impl Setup {
        fn new() -> Setup {
            let root = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            let sm = Arc::new(RecordingServiceManager::default());
            let ap = Applier::new(root.path(), state.path(), sm.clone(), fetcher());
            Setup {
                root,
                state,
                sm,
                ap,
            }
        }
        /// The unit calls made by `f`.
        async fn calls_of<T>(&self, f: impl Future<Output = T>) -> (T, Vec<String>) {
            let before = self.sm.calls().len();
            let out = f.await;
            (out, self.sm.calls()[before..].to_vec())
        }
        fn applied(&self) -> u64 {
            self.ap.last_applied().unwrap().map_or(0, |a| a.revision)
        }
        fn pending(&self) -> Option<PendingApply> {
            read_pending(&self.state.path().join(PENDING_FILE))
        }
    }

    /// Revision 1: unit `a` (its unit file, and `/etc/a.conf`) and unit `b` (its unit file,
    /// and `/etc/b.conf`).
    fn two_units() -> pb::Assignment {
        pb::Assignment {
            revision: 1,
            files: vec![
                file("/etc/systemd/system/a.service", "A1"),
                file("/etc/a.conf", "a1"),
                file("/etc/systemd/system/b.service", "B1"),
                file("/etc/b.conf", "b1"),
            ],
            units: vec![
                unit("a.service", &["/etc/a.conf"]),
                unit("b.service", &["/etc/b.conf"]),
            ],
            ..Default::default()
        }
    }

    /// hardening #9: an apply that fails part-way (its 3rd file cannot be written) is not
    /// recorded as applied. Once the obstruction is gone, the retry reloads systemd and
    /// restarts the unit whose files the failed attempt already wrote — unchanged on disk
    /// by then — leaves the unchanged unit alone, and only then records the revision.
    #[tokio::test]
    async fn hardening_9_a_retry_after_a_failed_write_reloads_and_restarts() {
        let t = Setup::new();
        t.ap.apply(&two_units(), false).await.unwrap();
        let mut r2 = two_units();
        r2.revision = 2;
        r2.files = vec![
            file("/etc/systemd/system/a.service", "A2"),
            file("/etc/a.conf", "a2"),
            file("/etc/blocked/c.conf", "c"),
            file("/etc/systemd/system/b.service", "B1"),
            file("/etc/b.conf", "b1"),
        ];
        // The 3rd file's directory is a regular file.
        let obstruction = t.root.path().join("etc/blocked");
        std::fs::write(&obstruction, "in the way").unwrap();

        let (r, calls) = t.calls_of(t.ap.apply(&r2, false)).await;
        let e = r.unwrap_err();
        assert!(matches!(e, ApplyError::Fs(_)), "{e}");
        assert_eq!(
            std::fs::read_to_string(t.root.path().join("etc/a.conf")).unwrap(),
            "a2",
            "the failed attempt wrote the first files"
        );
        assert!(calls.is_empty(), "{calls:?}");
        assert_eq!(t.applied(), 1);
        assert_eq!(t.pending().map(|p| p.revision), Some(2));

        std::fs::remove_file(&obstruction).unwrap();
        let (r, calls) = t.calls_of(t.ap.apply(&r2, false)).await;
        let d = r.unwrap();
        assert_eq!(
            d.changed,
            ["/etc/blocked/c.conf"],
            "the rest was on disk already"
        );
        assert_eq!(calls, ["daemon-reload", "restart a.service"]);
        assert_eq!(d.restarted, ["a.service"]);
        assert_eq!(t.applied(), 2);
        assert_eq!(t.pending(), None);
    }

    /// hardening #9: a restart that fails fails the apply, so the revision is not recorded;
    /// the retry restarts that unit, and not the one the failed attempt restarted already.
    #[tokio::test]
    async fn hardening_9_a_failed_restart_fails_the_apply_and_is_retried() {
        let t = Setup::new();
        t.ap.apply(&two_units(), false).await.unwrap();
        let mut r2 = two_units();
        r2.revision = 2;
        r2.files[1] = file("/etc/a.conf", "a2");
        r2.files[3] = file("/etc/b.conf", "b2");
        t.sm.fail_once("restart a.service");

        let (r, calls) = t.calls_of(t.ap.apply(&r2, false)).await;
        match r {
            Err(ApplyError::UnitActions { revision, errors }) => {
                assert_eq!(revision, 2);
                assert!(errors[0].contains("restart a.service"), "{errors:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(calls, ["restart a.service", "restart b.service"]);
        assert_eq!(t.applied(), 1);

        let (r, calls) = t.calls_of(t.ap.apply(&r2, false)).await;
        assert_eq!(r.unwrap().restarted, ["a.service"]);
        assert_eq!(calls, ["restart a.service"]);
        assert_eq!(t.applied(), 2);
        assert_eq!(t.pending(), None);
    }

    /// A failed `daemon-reload` fails the apply before any unit is restarted on a stale
    /// unit file; the retry reloads and restarts.
    #[tokio::test]
    async fn a_failed_daemon_reload_fails_the_apply_before_any_restart() {
        let t = Setup::new();
        t.ap.apply(&two_units(), false).await.unwrap();
        let mut r2 = two_units();
        r2.revision = 2;
        r2.files[0] = file("/etc/systemd/system/a.service", "A2");
        t.sm.fail_once("daemon-reload");

        let (r, calls) = t.calls_of(t.ap.apply(&r2, false)).await;
        assert!(matches!(r, Err(ApplyError::UnitActions { .. })), "{r:?}");
        assert_eq!(calls, ["daemon-reload"]);
        assert_eq!(t.applied(), 1);

        let (r, calls) = t.calls_of(t.ap.apply(&r2, false)).await;
        r.unwrap();
        assert_eq!(calls, ["daemon-reload", "restart a.service"]);
        assert_eq!(t.applied(), 2);
    }

    /// A newer revision arriving after a failed attempt is measured against the last
    /// *applied* revision too: what the failed attempt wrote still restarts its unit.
    #[tokio::test]
    async fn a_newer_revision_after_a_failed_one_restarts_what_the_failed_one_wrote() {
        let t = Setup::new();
        t.ap.apply(&two_units(), false).await.unwrap();
        let mut r2 = two_units();
        r2.revision = 2;
        r2.files[1] = file("/etc/a.conf", "a2");
        r2.files.insert(2, file("/etc/blocked/c.conf", "c"));
        std::fs::write(t.root.path().join("etc/blocked"), "in the way").unwrap();
        assert!(t.ap.apply(&r2, false).await.is_err());

        let mut r3 = r2.clone();
        r3.revision = 3;
        r3.files.remove(2);
        let (r, calls) = t.calls_of(t.ap.apply(&r3, false)).await;
        assert!(r.unwrap().changed.is_empty());
        assert_eq!(calls, ["restart a.service"]);
        assert_eq!(t.applied(), 3);
    }

    /// A boot-time apply whose start failed is retried as a boot-time apply: every unit
    /// is started again, although the retry itself is not at boot.
    #[tokio::test]
    async fn a_failed_start_at_boot_is_retried_as_at_boot() {
        let t = Setup::new();
        t.ap.apply(&two_units(), false).await.unwrap();
        t.sm.fail_once("start b.service --enable");

        let (r, calls) = t.calls_of(t.ap.apply(&two_units(), true)).await;
        assert!(matches!(r, Err(ApplyError::UnitActions { .. })), "{r:?}");
        let starts = [
            "daemon-reload",
            "start a.service --enable",
            "start b.service --enable",
        ];
        assert_eq!(calls, starts);
        assert_eq!(t.pending().map(|p| p.at_boot), Some(true));

        let (r, calls) = t.calls_of(t.ap.apply(&two_units(), false)).await;
        assert_eq!(r.unwrap().started, ["a.service", "b.service"]);
        assert_eq!(calls, starts);
        assert_eq!(t.pending(), None);

        // Done: the next apply of the same revision is an ordinary one again.
        let (r, calls) = t.calls_of(t.ap.apply(&two_units(), false)).await;
        assert!(r.unwrap().started.is_empty());
        assert!(calls.is_empty(), "{calls:?}");
    }
}
