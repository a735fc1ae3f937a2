//! `pangaea-ctl image load` in-process: a controller serving agents and the admin socket,
//! agents with temporary roots whose `ctr` is a recording fake (it sees the archive the agent
//! downloaded, as the real one would). The job reaches only the named nodes; the archive
//! arrives whole and digest-checked (a mirror copy altered behind the controller's back is
//! refused before `ctr` runs); a failing import on one node fails the command naming that
//! node and what `ctr` said; a corrupt archive is refused on every node; loading twice is
//! fine; and the refusals before any node is asked are clear.

use pangaea_agent::command::{Call, output};
use pangaea_controller::cmd::image::{Args, Outcome, load};
use pangaea_tests::{TestAgent, TestController, eventually};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

struct Cluster {
    ctl: TestController,
    agents: Vec<(String, TestAgent)>,
    work: tempfile::TempDir,
}

impl Cluster {
    /// A controller with its admin socket and `names` agents, each with a `ctr` in its root
    /// and its jobs stream connected.
    async fn start(names: &[&str]) -> Cluster {
        let ctl = TestController::start().await;
        ctl.serve_admin().await;
        let mut agents = Vec::new();
        for n in names {
            let (dir, cfg) = ctl.agent_config(n, &ctl.token(None).await);
            let ctr = cfg.root.join("usr/local/bin/ctr");
            std::fs::create_dir_all(ctr.parent().unwrap()).unwrap();
            std::fs::write(&ctr, "#!/bin/false\n").unwrap();
            agents.push((n.to_string(), TestAgent::spawn(dir, cfg)));
        }
        for n in names {
            eventually(&format!("{n}'s jobs stream"), T, || {
                ctl.controller.jobs().connected(n)
            })
            .await;
        }
        Cluster {
            ctl,
            agents,
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn agent(&self, name: &str) -> &TestAgent {
        &self.agents.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn archive(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.work.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    async fn load(&self, archive: &Path, nodes: &[&str]) -> (Outcome, Vec<String>) {
        let mut lines = Vec::new();
        let args = Args {
            archive: archive.to_owned(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(30),
        };
        let outcome = load(&self.ctl.state_dir(), &args, &mut |l| lines.push(l))
            .await
            .expect("the load starts");
        (outcome, lines)
    }
}

/// An OCI image archive as far as the fake `ctr` cares: a tar with `index.json`.
fn image_archive(tag: &str) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", format!(r#"{{"tag":"{tag}"}}"#).into_bytes()),
        ("blobs/sha256/00", vec![7u8; 300 * 1024]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, path, &data[..]).unwrap();
    }
    t.into_inner().unwrap()
}

fn sha256(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// What the fake `ctr` saw: the SHA-256 of each archive it was given to import.
type Seen = Arc<Mutex<Vec<String>>>;

/// A `ctr` that behaves like the real one on our archives: a tar holding `index.json` (or
/// docker's `manifest.json`) imports; anything else is refused with containerd's words.
fn fake_ctr(seen: Seen) -> impl Fn(&Call) -> std::io::Result<std::process::Output> {
    move |call| {
        let file = call.args.last().expect("the archive is the last argument");
        let bytes = std::fs::read(file)?;
        seen.lock().unwrap().push(sha256(&bytes));
        let mut names = Vec::new();
        if let Ok(entries) = tar::Archive::new(&bytes[..]).entries() {
            for e in entries {
                match e {
                    Ok(e) => names.push(e.path().unwrap().display().to_string()),
                    Err(_) => break,
                }
            }
        }
        if names
            .iter()
            .any(|n| n == "index.json" || n == "manifest.json")
        {
            Ok(output(
                0,
                "unpacking docker.io/local/app:1 (sha256:abcd)...done\n",
                "",
            ))
        } else {
            Ok(output(1, "", "ctr: unrecognized image format\n"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_reaches_only_the_named_nodes_whole_and_twice_is_fine() {
    let c = Cluster::start(&["n-1", "n-2", "n-3"]).await;
    let seen: Vec<Seen> = (0..3).map(|_| Seen::default()).collect();
    for (i, (_, a)) in c.agents.iter().enumerate() {
        a.commands.answer_with(fake_ctr(seen[i].clone()));
    }
    let bytes = image_archive("1");
    let archive = c.archive("app.tar", &bytes);

    let (outcome, lines) = c.load(&archive, &["n-1", "n-3"]).await;
    outcome.check().unwrap();
    assert_eq!(outcome.digest, format!("sha256:{}", sha256(&bytes)));
    let names: Vec<&str> = outcome.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["n-1", "n-3"]);
    for n in &outcome.nodes {
        assert_eq!(n.images, ["docker.io/local/app:1"], "{n:?}");
    }
    let said = lines.join("\n");
    assert!(said.contains("in the controller's mirror"), "{said}");
    assert!(said.contains("n-1: loaded docker.io/local/app:1"), "{said}");

    // Only the named nodes ran ctr, into the kubelet's namespace, on the very bytes.
    assert!(c.agent("n-2").commands.calls().is_empty());
    for (i, n) in [(0, "n-1"), (2, "n-3")] {
        let calls = c.agent(n).commands.calls();
        assert_eq!(calls.len(), 1, "{n}: {calls:?}");
        assert_eq!(calls[0].program, c.agent(n).root_path("/usr/local/bin/ctr"));
        assert_eq!(
            calls[0].args[..6],
            [
                "-n",
                "k8s.io",
                "images",
                "import",
                "--digests",
                "--skip-digest-for-named"
            ]
        );
        assert_eq!(*seen[i].lock().unwrap(), [sha256(&bytes)], "{n}");
    }
    // The job's files are gone from the node.
    for (n, a) in &c.agents {
        let jobs = a.cfg.state_dir.join("jobs");
        let left: Vec<_> = std::fs::read_dir(&jobs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{n}: {left:?}");
    }

    // Again, to every node: the same archive loads again (containerd keeps one copy).
    let (outcome, _) = c.load(&archive, &[]).await;
    outcome.check().unwrap();
    assert_eq!(outcome.nodes.len(), 3);
    assert_eq!(c.agent("n-1").commands.calls().len(), 2);
    assert_eq!(c.agent("n-2").commands.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_import_on_one_node_fails_the_command_naming_it() {
    let c = Cluster::start(&["n-1", "n-2"]).await;
    c.agent("n-1")
        .commands
        .answer_with(fake_ctr(Seen::default()));
    c.agent("n-2").commands.answer_with(|_| {
        Ok(output(
            1,
            "",
            "ctr: failed to ingest \"blobs/sha256/00\": write /var/lib/containerd/io.containerd.content.v1.content/ingest/x/data: no space left on device\n",
        ))
    });
    let archive = c.archive("app.tar", &image_archive("1"));
    let (outcome, lines) = c.load(&archive, &[]).await;
    let err = outcome.check().unwrap_err().to_string();
    eprintln!("{err}");
    assert!(
        err.starts_with("image load failed on 1 of 2 nodes:"),
        "{err}"
    );
    assert!(
        err.contains("n-2: ") && err.contains("no space left on device") && !err.contains("n-1"),
        "{err}"
    );
    assert!(
        err.contains("images import failed (exit status: 1)"),
        "{err}"
    );
    let said = lines.join("\n");
    assert!(said.contains("n-1: loaded"), "{said}");
    assert!(said.contains("n-2: FAILED: "), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_archive_is_refused_on_every_node() {
    let c = Cluster::start(&["n-1", "n-2"]).await;
    for (_, a) in &c.agents {
        a.commands.answer_with(fake_ctr(Seen::default()));
    }
    let archive = c.archive("broken.tar", &vec![0x5a; 64 * 1024]);
    let (outcome, _) = c.load(&archive, &[]).await;
    let err = outcome.check().unwrap_err().to_string();
    eprintln!("{err}");
    assert!(
        err.starts_with("image load failed on 2 of 2 nodes:"),
        "{err}"
    );
    for n in ["n-1", "n-2"] {
        assert!(err.contains(&format!("{n}: ")), "{n} is named: {err}");
    }
    assert_eq!(
        err.matches("ctr: unrecognized image format").count(),
        2,
        "{err}"
    );
}

/// The agent checks the digest before `ctr` sees a byte: a mirror copy changed behind the
/// controller's back (same size, other content) is refused on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_that_does_not_match_its_digest_never_reaches_ctr() {
    let c = Cluster::start(&["n-1", "n-2"]).await;
    let bytes = image_archive("1");
    let archive = c.archive("app.tar", &bytes);
    // Into the mirror as the command puts it there, then altered.
    let mirror = pangaea_controller::mirror::Mirror::new(&c.ctl.state_dir().artifacts());
    let entry = mirror.add_file(&archive, u64::MAX).unwrap();
    let blob = mirror.blob_path(&pangaea_artifact::Digest::parse(&entry.digest).unwrap());
    let mut altered = bytes.clone();
    altered[1000] ^= 0xff;
    std::fs::write(&blob, &altered).unwrap();

    let mut backend = pangaea_controller::admin::Backend::connect(&c.ctl.state_dir())
        .await
        .unwrap();
    let mut stream = backend
        .load_image(pangaea_proto::LoadImageRequest {
            digest: entry.digest.clone(),
            size: entry.size,
            timeout_seconds: 30,
            name: "app.tar".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut failed = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        let r = e.report.unwrap();
        if r.state() == pangaea_proto::JobState::Failed {
            failed.push((e.node, r.message));
        }
    }
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (node, message) in &failed {
        assert!(message.contains("digest mismatch"), "{node}: {message}");
    }
    for (_, a) in &c.agents {
        assert!(a.commands.calls().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_any_node_is_asked_are_clear() {
    let c = Cluster::start(&["n-1"]).await;
    let archive = c.archive("app.tar", &image_archive("1"));
    let args = |archive: &Path, nodes: &[&str]| Args {
        archive: archive.to_owned(),
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(5),
    };
    let err = load(&c.ctl.state_dir(), &args(&archive, &["n-9"]), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no node named \"n-9\"") && err.contains("nodes: n-1"),
        "{err}"
    );
    let err = load(
        &c.ctl.state_dir(),
        &args(&c.work.path().join("missing.tar"), &[]),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("missing.tar"), "{err:#}");
    let err = load(&c.ctl.state_dir(), &args(c.work.path(), &[]), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a file"), "{err}");

    // Without a running controller nothing is copied and nothing waits.
    let other = tempfile::tempdir().unwrap();
    let state = pangaea_controller::state_dir::StateDir::new(other.path().join(".pangaea"));
    state.ensure().unwrap();
    let err = load(&state, &args(&archive, &[]), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("the controller is not running"), "{err}");
}

/// A node that is down is named at once (after the connect grace), not waited for until
/// the timeout; the others load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_fails_at_once_and_the_others_load() {
    let ctl =
        TestController::start_with(|c| c.job_connect_grace = Duration::from_millis(500)).await;
    ctl.serve_admin().await;
    let mut agents = Vec::new();
    for n in ["n-1", "n-2"] {
        let (dir, cfg) = ctl.agent_config(n, &ctl.token(None).await);
        let ctr = cfg.root.join("usr/bin/ctr");
        std::fs::create_dir_all(ctr.parent().unwrap()).unwrap();
        std::fs::write(&ctr, "").unwrap();
        agents.push(TestAgent::spawn(dir, cfg));
    }
    for n in ["n-1", "n-2"] {
        eventually(n, T, || ctl.controller.jobs().connected(n)).await;
    }
    let down = agents.pop().unwrap().power_off();
    eventually("n-2's stream closed", T, || {
        !ctl.controller.jobs().connected("n-2")
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("app.tar");
    std::fs::write(&archive, image_archive("1")).unwrap();
    let started = std::time::Instant::now();
    let args = Args {
        archive,
        nodes: vec![],
        timeout: Duration::from_secs(60),
    };
    let outcome = load(&ctl.state_dir(), &args, &mut |_| {}).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = outcome.check().unwrap_err().to_string();
    assert!(
        err.starts_with("image load failed on 1 of 2 nodes:")
            && err.contains("n-2: not connected to the controller"),
        "{err}"
    );
    assert_eq!(agents[0].commands.calls().len(), 1);
    drop(down);
}
