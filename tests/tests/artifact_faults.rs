//! Fault injection against the artifact pipeline: the in-process [`Fetcher`] and the
//! `pangaea-agent fetch` binary download from the loopback [`HttpFixture`], which corrupts,
//! truncates, extends, closes, ignores `Range`, answers with error statuses or throttles on
//! request. For every fault the destination never holds a partial or unverified file, a
//! previously installed version stays byte for byte, no `.partial` is left where it would be
//! of no use, and the error says what went wrong.
//!
//! The full-disk test mounts a tmpfs and so needs root (CI runs as root). The SIGKILL test
//! takes `pangaea-agent` from the target directory beside this test executable, so
//! `cargo test --workspace` (or `cargo build --workspace` first) must have built it.

use pangaea_artifact::digest::Hasher;
use pangaea_artifact::fetch::partial_path;
use pangaea_artifact::{
    ArtifactSpec, Digest, DigestKind, FetchError, Fetcher, Member, RetryPolicy, Sources, State,
};
use pangaea_tests::http_fixture::{Faults, HttpFixture};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// Any one wait in these tests; far beyond what a passing run needs.
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift), different for every seed.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn digest_of(data: &[u8]) -> Digest {
    let mut h = Hasher::new(DigestKind::Sha256);
    h.update(data);
    h.finish()
}

fn fast_policy(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
    }
}

fn fetcher(attempts: u32) -> Fetcher {
    pangaea_tests::init();
    Fetcher::new(Sources::standard(), 2).with_policy(fast_policy(attempts))
}

/// Sorted names in `dir` (empty when it does not exist).
fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("list {}: {e}", dir.display()),
    };
    names.sort();
    names
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn spec(url: String, data: &[u8], dest: &Path) -> ArtifactSpec {
    ArtifactSpec {
        url,
        digest: digest_of(data),
        dest: dest.to_owned(),
        mode: 0o755,
        members: Vec::new(),
    }
}

/// `path` holds exactly `expected` (reported by size and first difference, not by dump).
#[track_caller]
fn assert_holds(path: &Path, expected: &[u8], what: &str) {
    let got = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", path.display()));
    if got != expected {
        let first = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{what}: {} holds {} bytes that differ from the expected {} bytes (first difference at byte {first})",
            path.display(),
            got.len(),
            expected.len()
        );
    }
}

/// The directory holds the destination and nothing else (no `.partial`, no temporary file).
#[track_caller]
fn assert_only_dest(dir: &Path, dest: &Path, what: &str) {
    assert_eq!(
        list_dir(dir),
        vec![name(dest)],
        "{what}: stray files beside the destination"
    );
}

#[track_caller]
fn assert_mentions(err: &FetchError, words: &[&str]) {
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "error {msg:?} should mention {w:?}");
    }
}

fn partial_len(dest: &Path, digest: &Digest) -> Option<u64> {
    std::fs::metadata(partial_path(dest, digest))
        .ok()
        .map(|m| m.len())
}

/// A node directory in a fresh temporary directory (the upstream `file://` copies live
/// outside it, so listing the node directory shows only what the pipeline left).
struct Node {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    dest: PathBuf,
    v1: Vec<u8>,
}

impl Node {
    fn empty() -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node");
        std::fs::create_dir(&dir).unwrap();
        let dest = dir.join("tool");
        Node {
            _tmp: tmp,
            dir,
            dest,
            v1: Vec::new(),
        }
    }

    /// With version 1 (`len` bytes) installed at the destination first.
    async fn with_v1(len: usize) -> Node {
        let mut n = Node::empty();
        n.v1 = content(len, 1);
        install_file(&n.dest, &n.v1).await;
        n
    }

    #[track_caller]
    fn assert_v1_intact(&self, what: &str) {
        assert_holds(&self.dest, &self.v1, &format!("{what}: previous version"));
    }
}

/// Installs `data` at `dest` through the pipeline from a `file://` copy.
async fn install_file(dest: &Path, data: &[u8]) {
    let upstream = tempfile::tempdir().unwrap();
    let src = upstream.path().join("upstream");
    std::fs::write(&src, data).unwrap();
    let installed = fetcher(1)
        .install(&spec(format!("file://{}", src.display()), data, dest))
        .await
        .unwrap_or_else(|e| panic!("install the first version: {e}"));
    assert!(installed.changed);
    assert_holds(dest, data, "first version");
}

/// Polls `check` every 2 ms until it is true, failing after [`DEADLINE`].
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn range_starts(fx: &HttpFixture) -> Vec<Option<u64>> {
    fx.requests().iter().map(|r| r.range_start).collect()
}

// ---------------------------------------------------------------------------------------
// 1. Corrupted byte
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn corrupted_byte_is_rejected_and_previous_version_stays() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(MIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    let spec = spec(fx.url(), &v2, &node.dest);
    for at in [0, v2.len() as u64 / 2, v2.len() as u64 - 1] {
        let what = format!("byte {at} corrupted");
        fx.set(Faults {
            corrupt_at: Some(at),
            ..Default::default()
        });
        let before = fx.requests().len();
        let err = fetcher(3)
            .install(&spec)
            .await
            .expect_err("a corrupted body must not install");
        assert!(
            matches!(err, FetchError::Mismatch { resumed: false, .. }),
            "{what}: {err}"
        );
        assert_mentions(
            &err,
            &[
                "digest mismatch",
                &spec.digest.to_string(),
                "nothing was installed",
            ],
        );
        assert_eq!(
            fx.requests().len(),
            before + 1,
            "{what}: a fresh download with the wrong digest is not retried"
        );
        node.assert_v1_intact(&what);
        assert_only_dest(&node.dir, &node.dest, &what);
    }
    fx.set(Faults::default());
    let installed = fetcher(1).install(&spec).await.unwrap();
    assert!(installed.changed);
    assert_eq!(installed.resumed_from, 0);
    assert_holds(&node.dest, &v2, "after the corruption stopped");
    assert_only_dest(&node.dir, &node.dest, "after the corruption stopped");
}

// ---------------------------------------------------------------------------------------
// 2. Truncated body, then resume
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn truncated_body_keeps_partial_and_next_install_resumes() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(MIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    let spec = spec(fx.url(), &v2, &node.dest);
    const CUT: u64 = 300_000;
    fx.set(Faults {
        close_at: Some(CUT),
        ..Default::default()
    });
    let err = fetcher(1)
        .install(&spec)
        .await
        .expect_err("a truncated body must not install");
    assert!(
        matches!(
            err,
            FetchError::Transport { .. } | FetchError::Truncated { .. }
        ),
        "{err}"
    );
    assert!(err.retryable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("transfer failed") || msg.contains("body ended"),
        "{msg}"
    );
    node.assert_v1_intact("truncated");
    let have =
        partial_len(&node.dest, &spec.digest).expect("the partial file is kept for resuming");
    assert_eq!(have, CUT, "the partial file holds what arrived");
    let mut expected = vec![
        name(&partial_path(&node.dest, &spec.digest)),
        name(&node.dest),
    ];
    expected.sort();
    assert_eq!(
        list_dir(&node.dir),
        expected,
        "v1 and the partial file, nothing else"
    );
    assert_eq!(fx.requests().len(), 1, "attempts = 1 makes one request");

    fx.set(Faults::default());
    let installed = fetcher(1).install(&spec).await.unwrap();
    assert!(installed.changed);
    assert_eq!(
        installed.resumed_from, have,
        "resumed from the bytes already there"
    );
    assert_eq!(installed.downloaded_bytes, v2.len() as u64 - have);
    assert_eq!(installed.attempts, 1);
    let log = fx.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].range_start, None);
    assert_eq!(
        log[1].range_start,
        Some(have),
        "the second request resumes instead of starting from zero"
    );
    assert_eq!(log[1].status, 206);
    assert_holds(&node.dest, &v2, "resumed download");
    assert_only_dest(&node.dir, &node.dest, "resumed download");
}

// ---------------------------------------------------------------------------------------
// 3. Extended body, trailing garbage
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn extended_body_is_rejected_and_trailing_garbage_ignored() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(MIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    let spec = spec(fx.url(), &v2, &node.dest);

    fx.set(Faults {
        extend_by: 1000,
        ..Default::default()
    });
    let err = fetcher(3)
        .install(&spec)
        .await
        .expect_err("a longer body must not install");
    assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
    assert_mentions(&err, &["digest mismatch", "nothing was installed"]);
    assert_eq!(fx.requests().len(), 1, "not retried");
    node.assert_v1_intact("extended body");
    assert_only_dest(&node.dir, &node.dest, "extended body");

    fx.set(Faults {
        trailing_garbage: 5000,
        ..Default::default()
    });
    let installed = fetcher(1)
        .install(&spec)
        .await
        .unwrap_or_else(|e| panic!("bytes beyond Content-Length are not content: {e}"));
    assert!(installed.changed);
    assert_eq!(installed.downloaded_bytes, v2.len() as u64);
    assert_holds(&node.dest, &v2, "trailing garbage");
    assert_only_dest(&node.dir, &node.dest, "trailing garbage");
}

// ---------------------------------------------------------------------------------------
// 4. Wrong digest in the configuration
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_configured_digest_names_both_digests_and_installs_nothing() {
    let served = content(300 * KIB, 2);
    let wrong = digest_of(b"not the artifact");
    let actual = digest_of(&served);
    let fx = HttpFixture::start(served.clone()).await;

    // Nothing installed before: nothing installed after.
    let fresh = Node::empty();
    let mut s = spec(fx.url(), &served, &fresh.dest);
    s.digest = wrong.clone();
    let err = fetcher(3).install(&s).await.expect_err("wrong digest");
    match &err {
        FetchError::Mismatch {
            expected,
            actual: got,
            resumed,
            ..
        } => {
            assert_eq!(expected, &wrong.to_string());
            assert_eq!(got, &actual.to_string());
            assert!(!resumed);
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert_mentions(
        &err,
        &[
            "digest mismatch",
            &format!("expected {wrong}"),
            &format!("got {actual}"),
            "nothing was installed",
        ],
    );
    assert!(!fresh.dest.exists(), "nothing is installed");
    assert_eq!(list_dir(&fresh.dir), Vec::<String>::new());
    assert_eq!(
        fx.requests().len(),
        1,
        "a configuration error is not retried"
    );

    // With a previous version: it stays.
    let node = Node::with_v1(100 * KIB).await;
    let mut s = spec(fx.url(), &served, &node.dest);
    s.digest = wrong.clone();
    let err = fetcher(3).install(&s).await.expect_err("wrong digest");
    assert_mentions(
        &err,
        &["digest mismatch", &wrong.to_string(), &actual.to_string()],
    );
    node.assert_v1_intact("wrong digest");
    assert_only_dest(&node.dir, &node.dest, "wrong digest");
}

// ---------------------------------------------------------------------------------------
// 5. Closed mid-stream on the first request only: retry resumes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_once_then_retry_resumes_and_succeeds() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(MIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    let spec = spec(fx.url(), &v2, &node.dest);
    const CUT: u64 = 400_000;
    // Throttled, so the first request is still streaming when the fault is cleared.
    fx.set(Faults {
        close_at: Some(CUT),
        chunk_delay: Some(Duration::from_millis(50)),
        ..Default::default()
    });
    let (faults, log) = (fx.faults.clone(), fx.log.clone());
    let clearer = tokio::spawn(async move {
        wait_for("the first request", || !log.lock().unwrap().is_empty()).await;
        *faults.lock().unwrap() = Faults::default();
    });
    let installed = fetcher(3)
        .install(&spec)
        .await
        .unwrap_or_else(|e| panic!("the retry should succeed: {e}"));
    clearer.await.unwrap();
    assert!(installed.changed);
    assert_eq!(installed.attempts, 2);
    assert_eq!(installed.resumed_from, CUT);
    assert_eq!(installed.downloaded_bytes, v2.len() as u64 - CUT);
    assert_eq!(range_starts(&fx), vec![None, Some(CUT)]);
    assert_holds(&node.dest, &v2, "retried download");
    assert_only_dest(&node.dir, &node.dest, "retried download");
}

// ---------------------------------------------------------------------------------------
// 6. Range ignored after an interrupted attempt
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn range_ignored_restarts_from_zero_and_is_correct() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(MIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    let spec = spec(fx.url(), &v2, &node.dest);
    const CUT: u64 = 500_000;
    fx.set(Faults {
        close_at: Some(CUT),
        ..Default::default()
    });
    fetcher(1).install(&spec).await.expect_err("interrupted");
    node.assert_v1_intact("interrupted");
    assert_eq!(partial_len(&node.dest, &spec.digest), Some(CUT));

    fx.set(Faults {
        ignore_range: true,
        ..Default::default()
    });
    let installed = fetcher(1).install(&spec).await.unwrap();
    assert!(installed.changed);
    assert_eq!(installed.resumed_from, 0, "the server did not resume");
    assert_eq!(installed.downloaded_bytes, v2.len() as u64);
    let log = fx.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[1].range_start,
        Some(CUT),
        "the client did ask to resume"
    );
    assert_eq!(log[1].status, 200, "and the server sent everything");
    assert_holds(&node.dest, &v2, "Range ignored");
    assert_only_dest(&node.dir, &node.dest, "Range ignored");
}

// ---------------------------------------------------------------------------------------
// 7. HTTP statuses: 404 not retried, 500 retried
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn status_404_is_not_retried() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(200 * KIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    fx.set(Faults {
        status: Some(404),
        ..Default::default()
    });
    let err = fetcher(5)
        .install(&spec(fx.url(), &v2, &node.dest))
        .await
        .expect_err("404");
    assert!(matches!(err, FetchError::Http { status: 404, .. }), "{err}");
    assert!(!err.retryable());
    assert_mentions(&err, &["HTTP status 404", &fx.url()]);
    assert_eq!(fx.requests().len(), 1, "404 is final: exactly one request");
    node.assert_v1_intact("404");
    assert_only_dest(&node.dir, &node.dest, "404");
}

#[tokio::test]
async fn status_500_is_retried() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(200 * KIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    let spec = spec(fx.url(), &v2, &node.dest);

    // Always 500: every attempt is used, then a clear error; v1 stays.
    fx.set(Faults {
        status: Some(500),
        ..Default::default()
    });
    let err = fetcher(3).install(&spec).await.expect_err("500");
    assert_mentions(&err, &["HTTP status 500"]);
    assert_eq!(fx.requests().len(), 3, "500 is retried up to the attempts");
    node.assert_v1_intact("500");
    assert_only_dest(&node.dir, &node.dest, "500");

    // Two transient 500s (counted from the server's first request), then success.
    let fx = HttpFixture::start(v2.clone()).await;
    let spec = self::spec(fx.url(), &v2, &node.dest);
    fx.set(Faults {
        fail_first: 2,
        ..Default::default()
    });
    let installed = fetcher(5).install(&spec).await.unwrap();
    assert_eq!(installed.attempts, 3);
    let statuses: Vec<u16> = fx.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    assert_holds(&node.dest, &v2, "after transient 500s");
    assert_only_dest(&node.dir, &node.dest, "after transient 500s");
}

// ---------------------------------------------------------------------------------------
// 8. Skip when current
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn current_artifact_is_not_downloaded_again() {
    let node = Node::empty();
    let v = content(300 * KIB, 2);
    let fx = HttpFixture::start(v.clone()).await;
    let spec = spec(fx.url(), &v, &node.dest);
    let f = fetcher(1);
    let first = f.install(&spec).await.unwrap();
    assert!(first.changed);
    assert_eq!(first.downloaded_bytes, v.len() as u64);
    assert_eq!(fx.requests().len(), 1);

    let second = f.install(&spec).await.unwrap();
    assert!(!second.changed, "{second:?}");
    assert_eq!(second.downloaded_bytes, 0);
    assert_eq!(fx.requests().len(), 1, "no request for a current artifact");

    // Only the mode drifted: fixed without a download.
    std::fs::set_permissions(&node.dest, std::fs::Permissions::from_mode(0o600)).unwrap();
    let third = fetcher(1).install(&spec).await.unwrap();
    assert!(!third.changed);
    assert_eq!(fx.requests().len(), 1);
    let mode = std::fs::metadata(&node.dest).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "mode restored");
    assert_holds(&node.dest, &v, "current");
    assert_only_dest(&node.dir, &node.dest, "current");
}

// ---------------------------------------------------------------------------------------
// Resumed download with bad bytes in the partial: discarded, started over once
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn corrupt_partial_is_discarded_and_download_restarts_from_zero() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(MIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    let spec = spec(fx.url(), &v2, &node.dest);
    // A bad byte lands in the partial file before the connection drops.
    fx.set(Faults {
        corrupt_at: Some(1000),
        close_at: Some(200_000),
        ..Default::default()
    });
    fetcher(1).install(&spec).await.expect_err("interrupted");
    assert_eq!(partial_len(&node.dest, &spec.digest), Some(200_000));
    node.assert_v1_intact("corrupt partial");

    fx.set(Faults::default());
    let installed = fetcher(3)
        .install(&spec)
        .await
        .unwrap_or_else(|e| panic!("a bad resumed download starts over: {e}"));
    assert_eq!(installed.attempts, 2, "{installed:?}");
    assert_eq!(installed.resumed_from, 0);
    assert_eq!(range_starts(&fx), vec![None, Some(200_000), None]);
    assert_holds(&node.dest, &v2, "restarted download");
    assert_only_dest(&node.dir, &node.dest, "restarted download");

    // With one attempt only, the bad resumed download is reported (as a resumed mismatch)
    // and its partial file discarded, so the next install starts clean.
    let v3 = content(MIB, 3);
    let fx = HttpFixture::start(v3.clone()).await;
    let spec = self::spec(fx.url(), &v3, &node.dest);
    fx.set(Faults {
        corrupt_at: Some(10),
        close_at: Some(100_000),
        ..Default::default()
    });
    fetcher(1).install(&spec).await.expect_err("interrupted");
    fx.set(Faults::default());
    let err = fetcher(1)
        .install(&spec)
        .await
        .expect_err("bad resumed bytes");
    assert!(
        matches!(err, FetchError::Mismatch { resumed: true, .. }),
        "{err}"
    );
    assert_holds(&node.dest, &v2, "resumed mismatch");
    assert_only_dest(&node.dir, &node.dest, "resumed mismatch");
    fetcher(1).install(&spec).await.unwrap();
    assert_holds(&node.dest, &v3, "clean restart");
}

#[tokio::test]
async fn partial_of_an_abandoned_version_is_removed_after_install() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(MIB, 2);
    let fx2 = HttpFixture::start(v2.clone()).await;
    let spec2 = spec(fx2.url(), &v2, &node.dest);
    fx2.set(Faults {
        close_at: Some(100_000),
        ..Default::default()
    });
    fetcher(1).install(&spec2).await.expect_err("interrupted");
    assert!(partial_len(&node.dest, &spec2.digest).is_some());

    let v3 = content(300 * KIB, 3);
    let fx3 = HttpFixture::start(v3.clone()).await;
    let spec3 = spec(fx3.url(), &v3, &node.dest);
    assert_ne!(
        partial_path(&node.dest, &spec2.digest),
        partial_path(&node.dest, &spec3.digest),
        "partial files are per digest"
    );
    fetcher(1).install(&spec3).await.unwrap();
    assert_eq!(
        fx3.requests()[0].range_start,
        None,
        "v3 does not resume from v2's bytes"
    );
    assert_holds(&node.dest, &v3, "v3");
    assert_only_dest(&node.dir, &node.dest, "v2's partial is of no further use");
}

// ---------------------------------------------------------------------------------------
// 9. Full disk (tmpfs; needs root)
// ---------------------------------------------------------------------------------------

/// `id -u` rather than `geteuid()`: `nix` is not a dependency of this package.
fn require_root() {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("run `id -u` to check for root");
    let euid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        euid == "0",
        "this test needs root (CI runs as root): it mounts a tmpfs; running as uid {euid}"
    );
}

/// A mounted tmpfs, unmounted when dropped (also when the test fails), lazily if busy.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs on {}: {status}",
            dir.display()
        );
        Tmpfs {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes zeros to `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let buf = vec![0u8; 64 * KIB];
    let mut n = 0u64;
    loop {
        match f.write(&buf) {
            Ok(0) => return n,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return n,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_refused_and_previous_version_stays() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    // The pipeline keeps 16 MiB free beyond the artifact, so the file system must be larger
    // than that for the first version to install at all.
    let _mount = Tmpfs::mount(&mnt, "20m");
    let dest = mnt.join("tool");
    let v1 = content(100 * KIB, 1);
    install_file(&dest, &v1).await;

    // Free-space precheck: 5 MiB + margin does not fit in what is left.
    let v2 = content(5 * MIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    let spec2 = spec(fx.url(), &v2, &dest);
    let err = fetcher(3)
        .install(&spec2)
        .await
        .expect_err("disk too small");
    assert!(matches!(err, FetchError::DiskFull { .. }), "{err}");
    assert!(!err.retryable());
    assert_mentions(
        &err,
        &[
            "not enough space",
            &mnt.display().to_string(),
            "left as it was",
        ],
    );
    assert_eq!(fx.requests().len(), 1, "not retried");
    assert_holds(&dest, &v1, "precheck: previous version");
    assert_only_dest(&mnt, &dest, "precheck");

    // The precheck passes (3 MiB + margin fits), then the disk fills up under the running
    // download: the write fails with ENOSPC.
    let v3 = content(3 * MIB, 3);
    let fx = HttpFixture::start(v3.clone()).await;
    fx.set(Faults {
        chunk_delay: Some(Duration::from_millis(50)),
        ..Default::default()
    });
    let spec3 = spec(fx.url(), &v3, &dest);
    let f = Arc::new(fetcher(1));
    let progress = f.progress().clone();
    let task = tokio::spawn({
        let (f, spec3) = (f.clone(), spec3.clone());
        async move { f.install(&spec3).await }
    });
    wait_for("the download to start writing", || {
        progress
            .get(&dest)
            .is_some_and(|s| s.state == State::Downloading && s.bytes_done > 0)
    })
    .await;
    let filler = tmp.path().join("mnt").join("filler");
    let filled = tokio::task::spawn_blocking({
        let filler = filler.clone();
        move || fill(&filler)
    })
    .await
    .unwrap();
    assert!(filled > MIB as u64, "filled {filled} bytes");
    let err = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("install finishes")
        .unwrap()
        .expect_err("the disk filled up");
    std::fs::remove_file(&filler).unwrap();
    assert!(matches!(err, FetchError::DiskFull { .. }), "{err}");
    assert_mentions(&err, &["not enough space", "left as it was"]);
    assert_holds(&dest, &v1, "ENOSPC: previous version");
    assert_only_dest(&mnt, &dest, "ENOSPC");
}

// ---------------------------------------------------------------------------------------
// 10. Archives
// ---------------------------------------------------------------------------------------

/// A `.tar.gz` (built by the system `tar`) of `files`, named as given (`./x` stays `./x`).
fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for (path, data) in files {
        let p = src.join(path.trim_start_matches("./"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    tar_czf(&src, &files.iter().map(|(p, _)| *p).collect::<Vec<_>>())
}

/// `tar czf` of `names` under `src`, as the system `tar` stores them (links as links).
fn tar_czf(src: &Path, names: &[&str]) -> Vec<u8> {
    let out = src.with_extension("tar.gz");
    let status = Command::new("tar")
        .arg("czf")
        .arg(&out)
        .arg("-C")
        .arg(src)
        .args(names)
        .status()
        .expect("run tar");
    assert!(status.success(), "tar czf: {status}");
    std::fs::read(&out).unwrap()
}

fn archive_spec(url: String, archive: &[u8], dir: &Path, extra: &[&str]) -> ArtifactSpec {
    let mut members = vec![
        Member {
            path: "bin/a".into(),
            dest: dir.join("a"),
            mode: 0o755,
        },
        Member {
            path: "dir/b".into(),
            dest: dir.join("b"),
            mode: 0o640,
        },
    ];
    members.extend(extra.iter().map(|p| Member {
        path: (*p).into(),
        dest: dir.join(p.replace('/', "_")),
        mode: 0o644,
    }));
    ArtifactSpec {
        url,
        digest: digest_of(archive),
        dest: dir.join("bundle.tar.gz"),
        mode: 0o644,
        members,
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn archive_members_are_extracted_and_a_missing_member_installs_none() {
    let archive = tar_gz(&[
        ("./bin/a", b"#!/bin/sh\necho a\n"),
        ("dir/b", b"b contents\n"),
        ("dir/other", b"not asked for\n"),
    ]);
    let fx = HttpFixture::start(archive.clone()).await;
    let tmp = tempfile::tempdir().unwrap();

    let dir = tmp.path().join("ok");
    let spec = archive_spec(fx.url(), &archive, &dir, &[]);
    let installed = fetcher(1).install(&spec).await.unwrap();
    assert!(installed.changed);
    assert_holds(&dir.join("a"), b"#!/bin/sh\necho a\n", "member ./bin/a");
    assert_holds(&dir.join("b"), b"b contents\n", "member dir/b");
    assert_eq!(mode_of(&dir.join("a")), 0o755);
    assert_eq!(mode_of(&dir.join("b")), 0o640);
    assert_holds(&spec.dest, &archive, "the archive itself");
    assert_eq!(
        list_dir(&dir),
        vec![
            ".bundle.tar.gz.members".to_owned(),
            "a".into(),
            "b".into(),
            "bundle.tar.gz".into()
        ],
        "only the members asked for and the extraction record, no temporary files"
    );

    // A deleted member comes back without a download.
    std::fs::remove_file(dir.join("b")).unwrap();
    let again = fetcher(1).install(&spec).await.unwrap();
    assert!(again.changed);
    assert_eq!(fx.requests().len(), 1);
    assert_holds(&dir.join("b"), b"b contents\n", "re-extracted member");

    // A member the archive lacks: nothing of it is installed.
    let dir = tmp.path().join("missing");
    let spec = archive_spec(fx.url(), &archive, &dir, &["nope/c"]);
    let err = fetcher(3).install(&spec).await.expect_err("missing member");
    assert!(matches!(err, FetchError::Archive { .. }), "{err}");
    assert_mentions(&err, &["members not found", "nope/c"]);
    assert!(!err.to_string().contains("bin/a"), "{err}");
    for m in ["a", "b", "nope_c"] {
        assert!(!dir.join(m).exists(), "member {m} must not be installed");
    }
    let left: Vec<String> = list_dir(&dir)
        .into_iter()
        .filter(|n| n != "bundle.tar.gz")
        .collect();
    assert!(left.is_empty(), "no temporary or partial files: {left:?}");
}

/// Installs archive v1 with members a and b, then tries v2 asking for a member it lacks.
async fn archive_v1_then_failed_v2(dir: &Path) -> (HttpFixture, Vec<u8>, Vec<u8>, ArtifactSpec) {
    let v1 = tar_gz(&[("./bin/a", b"a v1\n"), ("dir/b", b"b v1\n")]);
    let v2 = tar_gz(&[("./bin/a", b"a v2\n"), ("dir/b", b"b v2\n")]);
    let fx1 = HttpFixture::start(v1.clone()).await;
    fetcher(1)
        .install(&archive_spec(fx1.url(), &v1, dir, &[]))
        .await
        .unwrap();
    assert_holds(&dir.join("a"), b"a v1\n", "v1 member a");
    let fx2 = HttpFixture::start(v2.clone()).await;
    let bad = archive_spec(fx2.url(), &v2, dir, &["nope/c"]);
    let err = fetcher(1).install(&bad).await.expect_err("missing member");
    assert_mentions(&err, &["members not found", "nope/c"]);
    assert_holds(&dir.join("a"), b"a v1\n", "member a after the failed v2");
    assert_holds(&dir.join("b"), b"b v1\n", "member b after the failed v2");
    let good = archive_spec(fx2.url(), &v2, dir, &[]);
    (fx2, v1, v2, good)
}

/// Fails today: `download` renames the verified archive into place (artifact/src/fetch.rs,
/// `std::fs::rename(&partial, &spec.dest)`) before `install_inner` extracts the members
/// (`self.extract(spec, true).await?`), so an extraction failure returns an error with the new
/// archive already installed over the previous one.
#[tokio::test]
async fn archive_with_missing_member_keeps_previous_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let (_fx, v1, _v2, good) = archive_v1_then_failed_v2(&dir).await;
    // "The previous version stays in place on every failure."
    assert_holds(
        &good.dest,
        &v1,
        "the failed v2 install replaced the previous archive",
    );
}

/// Fails today, same root cause: once the new archive is in place, the next install finds
/// it current and `extract(spec, false)` only extracts members whose destination is missing
/// (artifact/src/fetch.rs, `.filter(|m| all || !m.dest.exists())`), so members left from the
/// previous archive are never replaced. A SIGKILL between the rename and the extraction
/// leaves a node in the same state.
#[tokio::test]
async fn archive_members_follow_the_archive_after_a_failed_extraction() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let (fx, _v1, v2, good) = archive_v1_then_failed_v2(&dir).await;
    // The configuration is fixed; installing v2 must leave v2's members in place.
    let installed = fetcher(1).install(&good).await.unwrap();
    assert_holds(&good.dest, &v2, "archive v2");
    assert_holds(
        &dir.join("a"),
        b"a v2\n",
        &format!(
            "member a of archive v2 ({installed:?}, {} requests)",
            fx.requests().len()
        ),
    );
    assert_holds(&dir.join("b"), b"b v2\n", "member b of archive v2");
}

// ---------------------------------------------------------------------------------------
// 11. SIGKILL loop against the agent binary
// ---------------------------------------------------------------------------------------

/// `target/<profile>/<name>`: the test executable is `target/<profile>/deps/NAME-HASH`.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is in target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first: cargo build --workspace",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_never_leaves_a_partial_destination_and_resumes() {
    let agent = binary("pangaea-agent");
    let data = content(8 * MIB, 11);
    let digest = digest_of(&data);
    let fx = HttpFixture::start(data.clone()).await;
    // The fixture pauses 100 ms after each chunk (256 KiB at most): at least 3.2 s for the
    // whole download, more than all kill rounds together, so every round is interrupted.
    fx.set(Faults {
        chunk_delay: Some(Duration::from_millis(100)),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let dest = dir.join("tool");
    let partial = partial_path(&dest, &digest);
    let allowed: BTreeSet<String> = [name(&dest), name(&partial)].into();
    let fetch = |stdout: Stdio| {
        let mut c = tokio::process::Command::new(&agent);
        c.args([
            "fetch",
            "--url",
            &fx.url(),
            "--sha256",
            &digest.hex(),
            "--dest",
        ])
        .arg(&dest)
        .args(["--attempts", "1"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .kill_on_drop(true);
        c
    };

    let mut sizes = Vec::new();
    let mut killed = 0;
    for round in 1..=10u64 {
        let mut child = fetch(Stdio::null())
            .spawn()
            .expect("start pangaea-agent fetch");
        // The deliberate kill point: once this round has added to the partial file (so a
        // loaded machine, slow to start the process, still makes progress every round),
        // then a little later, at a point that moves with the round.
        let before = sizes.last().copied().unwrap_or(0);
        let grew = tokio::time::timeout(Duration::from_secs(20), async {
            while partial_len(&dest, &digest).unwrap_or(0) <= before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(grew.is_ok(), "round {round}: the download made no progress");
        tokio::time::sleep(Duration::from_millis(10 * (round % 4))).await;
        child.start_kill().expect("SIGKILL");
        let status = child.wait().await.unwrap();
        if status.signal() == Some(9) {
            killed += 1;
        }
        let what = format!("round {round} ({status})");
        match std::fs::read(&dest) {
            Ok(c) => assert!(
                c == data,
                "{what}: {} holds a partial or wrong file",
                dest.display()
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{what}: {e}"),
        }
        for n in list_dir(&dir) {
            assert!(
                allowed.contains(&n),
                "{what}: unexpected file {n} beside the destination"
            );
        }
        let size = partial_len(&dest, &digest).unwrap_or(0);
        if let Some(prev) = sizes.last() {
            assert!(
                size >= *prev,
                "{what}: the partial shrank from {prev} to {size} ({sizes:?})"
            );
        }
        sizes.push(size);
    }
    assert!(
        killed >= 8,
        "only {killed} of 10 rounds were killed mid-run"
    );
    let before_final = *sizes.last().unwrap();
    assert!(
        before_final > 0 && before_final < data.len() as u64,
        "the kills should leave a partial download: {sizes:?}"
    );

    // The last run, unthrottled, to completion.
    fx.set(Faults::default());
    let out = tokio::time::timeout(DEADLINE, fetch(Stdio::piped()).output())
        .await
        .expect("the final fetch finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "final fetch: {} {stdout}", out.status);
    assert!(
        stdout.contains(&format!("resumed from byte {before_final}")),
        "{stdout}"
    );
    assert_holds(&dest, &data, "after the SIGKILL rounds");
    assert_only_dest(&dir, &dest, "after the SIGKILL rounds");

    let starts: Vec<u64> = fx
        .requests()
        .iter()
        .map(|r| r.range_start.unwrap_or(0))
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] <= w[1]),
        "requested offsets never go back: {starts:?}"
    );
    let resumed: BTreeSet<u64> = starts.iter().copied().filter(|s| *s > 0).collect();
    assert!(
        resumed.len() >= 3,
        "the download resumed at growing offsets across rounds: {starts:?}"
    );
    assert_eq!(
        starts.last().copied(),
        Some(before_final),
        "the final request resumed from the partial file: {starts:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 12. Progress
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_shows_downloading_then_installed_or_failed() {
    let node = Node::with_v1(100 * KIB).await;
    let v2 = content(2 * MIB, 2);
    let total = v2.len() as u64;
    let fx = HttpFixture::start(v2.clone()).await;
    fx.set(Faults {
        chunk_delay: Some(Duration::from_millis(30)),
        ..Default::default()
    });
    let f = Arc::new(fetcher(1));
    let progress = f.progress().clone();
    let spec2 = spec(fx.url(), &v2, &node.dest);
    let task = tokio::spawn({
        let (f, s) = (f.clone(), spec2.clone());
        async move { f.install(&s).await }
    });
    let mut seen = None;
    wait_for("progress with 0 < bytes_done < total", || {
        seen = progress
            .get(&node.dest)
            .filter(|s| s.state == State::Downloading && s.bytes_done > 0 && s.bytes_done < total);
        seen.is_some()
    })
    .await;
    let seen = seen.unwrap();
    assert_eq!(seen.bytes_total, Some(total));
    assert_eq!(seen.url, fx.url());
    assert_eq!(seen.error, None);
    node.assert_v1_intact("while downloading");
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("download finishes")
        .unwrap()
        .unwrap();
    let done = progress.get(&node.dest).unwrap();
    assert_eq!(done.state, State::Installed);
    assert_eq!(done.bytes_done, total);
    assert_holds(&node.dest, &v2, "installed");

    // A failure mid-stream: Failed, with the error's text.
    let v3 = content(MIB, 3);
    let fx3 = HttpFixture::start(v3.clone()).await;
    fx3.set(Faults {
        close_at: Some(300_000),
        ..Default::default()
    });
    let err = f
        .install(&spec(fx3.url(), &v3, &node.dest))
        .await
        .expect_err("interrupted");
    let failed = progress.get(&node.dest).unwrap();
    assert_eq!(failed.state, State::Failed);
    assert_eq!(failed.error.as_deref(), Some(err.to_string().as_str()));
    assert_eq!(failed.bytes_done, 300_000);
    assert_eq!(failed.url, fx3.url());

    // And a 404 on another destination.
    let other = node.dir.join("other");
    fx3.set(Faults {
        status: Some(404),
        ..Default::default()
    });
    f.install(&spec(fx3.url(), &v3, &other))
        .await
        .expect_err("404");
    let failed = progress.get(&other).unwrap();
    assert_eq!(failed.state, State::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP status 404")),
        "{failed:?}"
    );
    assert_holds(&node.dest, &v2, "other destinations are untouched");
}

// ---------------------------------------------------------------------------------------
// 13. Limits, links and planted files (hardening #11)
// ---------------------------------------------------------------------------------------

/// A loopback server whose body never ends: `Transfer-Encoding: chunked`, no
/// `Content-Length`. A `Range: bytes=N-` request gets a 206 whose `Content-Range` declares
/// `declared` bytes in all (when given) — and the same endless body.
struct EndlessServer {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    /// Connections the client hung up on (the server's write failed).
    hung_up: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EndlessServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EndlessServer {
    async fn start(declared: Option<u64>) -> EndlessServer {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let hung_up = Arc::new(AtomicUsize::new(0));
        let (r, h) = (requests.clone(), hung_up.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (r, h) = (r.clone(), h.clone());
                tokio::spawn(async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    if serve_endless(sock, declared).await.is_err() {
                        h.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        EndlessServer {
            addr,
            requests,
            hung_up,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/endless", self.addr)
    }
}

/// Sends chunks until a write fails (the only way it ends).
async fn serve_endless(
    mut sock: tokio::net::TcpStream,
    declared: Option<u64>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let Some(range_start) = pangaea_tests::http_fixture::read_request(&mut sock).await? else {
        return Ok(());
    };
    let status = match (range_start, declared) {
        (Some(start), Some(total)) => format!(
            "206 Partial Content\r\nContent-Range: bytes {start}-{}/{total}",
            total - 1
        ),
        _ => "200 OK".to_owned(),
    };
    let head =
        format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    sock.write_all(head.as_bytes()).await?;
    let mut chunk = format!("{:x}\r\n", 64 * KIB).into_bytes();
    chunk.extend(std::iter::repeat_n(b'E', 64 * KIB));
    chunk.extend_from_slice(b"\r\n");
    loop {
        sock.write_all(&chunk).await?;
    }
}

/// hardening #11, case 1: a chunked body without `Content-Length` that never ends is
/// abandoned at the fetcher's maximum instead of being written until the disk is full; the
/// error names the URL and the limit, the partial file is removed, the previous version
/// stays, and the connection is closed.
#[tokio::test]
async fn endless_chunked_body_is_abandoned_at_the_maximum() {
    let node = Node::with_v1(100 * KIB).await;
    let server = EndlessServer::start(None).await;
    let spec = spec(server.url(), b"never served", &node.dest);
    let err = fetcher(3)
        .with_max_size(MIB as u64)
        .install(&spec)
        .await
        .expect_err("an endless body must not install");
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                limit: 1_048_576,
                declared: false,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(
        &err,
        &[
            &server.url(),
            "exceeds 1048576 bytes",
            "the maximum for a download of undeclared size",
            "nothing was installed",
        ],
    );
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        1,
        "too large is not retried"
    );
    node.assert_v1_intact("endless body");
    assert_only_dest(&node.dir, &node.dest, "endless body");
    wait_for("the client to hang up on the endless body", || {
        server.hung_up.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// hardening #11, case 1: a resumed download whose 206 declares the content's size
/// (`Content-Range: …/2000`) but whose chunked body runs past it is abandoned at the declared
/// size, and the partial file (resumed prefix included) is removed.
#[tokio::test]
async fn body_past_the_declared_size_is_abandoned_and_the_partial_removed() {
    let node = Node::with_v1(100 * KIB).await;
    let server = EndlessServer::start(Some(2000)).await;
    let spec = spec(server.url(), b"never served", &node.dest);
    let partial = partial_path(&node.dest, &spec.digest);
    std::fs::write(&partial, vec![b'p'; 1000]).unwrap();
    let err = fetcher(1)
        .install(&spec)
        .await
        .expect_err("a body past its declared size must not install");
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                limit: 2000,
                declared: true,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(
        &err,
        &[
            &server.url(),
            "exceeds 2000 bytes",
            "the size the source declared",
        ],
    );
    node.assert_v1_intact("body past the declared size");
    assert_only_dest(&node.dir, &node.dest, "body past the declared size");
}

/// hardening #11, case 3: a wanted tar member that is a symbolic link (to `/etc/passwd`) or a
/// hard link was installed as an empty executable. It is refused with an error naming the
/// archive and the member, and no member is installed.
#[tokio::test]
async fn archive_member_that_is_a_link_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/b"), b"b contents\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("bin/a")).unwrap();
    let symlinked = tar_czf(&src, &["dir/b", "./bin/a"]);
    std::fs::remove_file(src.join("bin/a")).unwrap();
    // Archived after `dir/b`, the second name of the same file is stored as a hard link.
    std::fs::hard_link(src.join("dir/b"), src.join("bin/a")).unwrap();
    let hard_linked = tar_czf(&src, &["dir/b", "bin/a"]);

    for (what, archive, words) in [
        (
            "symbolic link",
            symlinked,
            ["./bin/a", "a symbolic link to \"/etc/passwd\""],
        ),
        (
            "hard link",
            hard_linked,
            ["bin/a", "a hard link to \"dir/b\""],
        ),
    ] {
        let fx = HttpFixture::start(archive.clone()).await;
        let dir = tmp.path().join(what.replace(' ', "-"));
        let spec = archive_spec(fx.url(), &archive, &dir, &[]);
        let err = fetcher(3)
            .install(&spec)
            .await
            .expect_err("a link member must not install");
        assert!(matches!(err, FetchError::Archive { .. }), "{what}: {err}");
        assert_mentions(&err, &words);
        assert_mentions(
            &err,
            &[
                "archive ",
                ".bundle.tar.gz.",
                "only regular files are extracted",
                "no member was installed",
            ],
        );
        assert_eq!(fx.requests().len(), 1, "{what}: not retried");
        assert_eq!(
            list_dir(&dir),
            Vec::<String>::new(),
            "{what}: no member, no archive, no partial or temporary file"
        );
    }
}

/// hardening #11, case 4: a link planted at the `.partial` path — a symbolic link to a
/// stand-in for `/etc/passwd`, one to a file that does not exist yet, a hard link — is never
/// written through: the download removes the link (not its target), starts from zero and
/// installs, and the target keeps its bytes and mode (or is never created).
#[tokio::test]
async fn link_planted_at_the_partial_path_is_never_written_through() {
    let v2 = content(MIB, 2);
    let fx = HttpFixture::start(v2.clone()).await;
    let outside = tempfile::tempdir().unwrap();
    let passwd = outside.path().join("passwd");
    let original = content(1000, 9);
    std::fs::write(&passwd, &original).unwrap();
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let not_yet = outside.path().join("cron-job");

    for what in ["symbolic link", "dangling symbolic link", "hard link"] {
        let node = Node::empty();
        let spec = spec(fx.url(), &v2, &node.dest);
        let partial = partial_path(&node.dest, &spec.digest);
        match what {
            "symbolic link" => std::os::unix::fs::symlink(&passwd, &partial).unwrap(),
            "dangling symbolic link" => std::os::unix::fs::symlink(&not_yet, &partial).unwrap(),
            _ => std::fs::hard_link(&passwd, &partial).unwrap(),
        }
        let before = fx.requests().len();
        let installed = fetcher(1)
            .install(&spec)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            installed.resumed_from, 0,
            "{what}: not resumed from the link"
        );
        assert_eq!(
            fx.requests()[before].range_start,
            None,
            "{what}: the request asks for everything"
        );
        assert_holds(&node.dest, &v2, what);
        assert_only_dest(&node.dir, &node.dest, what);
        assert_holds(&passwd, &original, &format!("{what}: the link's target"));
        assert_eq!(mode_of(&passwd), 0o644, "{what}: the target's mode");
        assert!(!not_yet.exists(), "{what}: a file created through the link");
    }
}
