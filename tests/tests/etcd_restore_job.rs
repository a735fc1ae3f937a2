//! Lifecycle (disaster recovery): the agent's side of `etcd snapshot restore`, in-process —
//! a controller with its admin socket, an agent with a temporary root whose `systemctl` is
//! recorded. The restored data directory replaces etcd's, the old one kept, etcd stopped
//! before and started after; and every attack leaves etcd's data as it was and etcd running:
//! a path that climbs out, an archive that is not one, an entry that climbs out, a stop
//! that fails.

use pangaea_agent::command::output;
use pangaea_controller::admin::Backend;
use pangaea_controller::mirror::Mirror;
use pangaea_proto as pb;
use pangaea_tests::{TestAgent, TestController, eventually};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

struct Node {
    ctl: TestController,
    agent: TestAgent,
    work: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let ctl = TestController::start().await;
        ctl.serve_admin().await;
        let (dir, cfg) = ctl.agent_config("n-1", &ctl.token(None).await);
        let agent = TestAgent::spawn(dir, cfg);
        eventually("n-1's jobs stream", T, || {
            ctl.controller.jobs().connected("n-1")
        })
        .await;
        let node = Node {
            ctl,
            agent,
            work: tempfile::tempdir().unwrap(),
        };
        let data = node.agent.root_path("/var/lib/etcd/member/snap");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("db"), "the old data").unwrap();
        node
    }

    /// The archive's bytes put in the controller's mirror: (digest, size).
    fn in_mirror(&self, name: &str, bytes: &[u8]) -> (String, u64) {
        let file = self.work.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let e = Mirror::new(&self.ctl.state_dir().artifacts())
            .add_file(&file, 1 << 30)
            .unwrap();
        (e.digest, e.size)
    }

    /// Runs the restore job; its outcome.
    async fn restore(&self, digest: &str, size: u64, data_dir: &str) -> pb::JobReport {
        let mut backend = Backend::connect(&self.ctl.state_dir()).await.unwrap();
        let mut stream = backend
            .restore_etcd(pb::RestoreEtcdRequest {
                node: "n-1".into(),
                restore: Some(pb::EtcdRestore {
                    digest: digest.into(),
                    size,
                    data_dir: data_dir.into(),
                    unit: "etcd.service".into(),
                }),
                timeout_seconds: 30,
            })
            .await
            .unwrap();
        let mut last = None;
        while let Some(e) = stream.message().await.unwrap() {
            last = e.report;
        }
        last.expect("an outcome")
    }

    fn db(&self) -> String {
        std::fs::read_to_string(self.agent.root_path("/var/lib/etcd/member/snap/db")).unwrap()
    }

    fn systemctl_calls(&self) -> Vec<String> {
        self.agent
            .commands
            .calls()
            .iter()
            .filter(|c| c.program == Path::new("systemctl"))
            .map(|c| c.args.join(" "))
            .collect()
    }

    /// What is beside etcd's data directory.
    fn beside(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.agent.root_path("/var/lib"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("etcd"))
            .collect();
        v.sort();
        v
    }
}

/// A data directory holding `db`, packed as the controller packs it.
fn data_archive(db: &str) -> Vec<u8> {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("member/snap")).unwrap();
    std::fs::create_dir_all(src.path().join("member/wal")).unwrap();
    std::fs::write(src.path().join("member/snap/db"), db).unwrap();
    std::fs::write(src.path().join("member/wal/0.wal"), "wal").unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    pangaea_artifact::tree::pack(src.path(), out.path()).unwrap();
    std::fs::read(out.path()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restored_data_replaces_etcds_and_every_attack_leaves_it_running_as_it_was() {
    pangaea_tests::init();
    let n = Node::start().await;

    // A data directory that climbs out of the node's paths is refused before anything.
    let (digest, size) = n.in_mirror("good.tar.gz", &data_archive("restored"));
    for bad in ["var/lib/etcd", "/var/lib/../../etc", "/"] {
        let r = n.restore(&digest, size, bad).await;
        assert_eq!(r.state(), pb::JobState::Failed, "{bad}: {r:?}");
        assert!(r.message.contains("refused"), "{bad}: {}", r.message);
    }
    // Not an archive (its digest is right: the mirror holds these very bytes).
    let (junk, junk_size) = n.in_mirror("junk.tar.gz", b"not a gzip stream at all");
    let r = n.restore(&junk, junk_size, "/var/lib/etcd").await;
    assert_eq!(r.state(), pb::JobState::Failed, "{r:?}");
    assert!(
        r.message.contains("unpack the restored data"),
        "{}",
        r.message
    );
    // An entry that climbs out of the data directory.
    let evil = {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_old_mut().name[..11].copy_from_slice(b"../../x.txt");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    };
    let (evil, evil_size) = n.in_mirror("evil.tar.gz", &evil);
    let r = n.restore(&evil, evil_size, "/var/lib/etcd").await;
    assert_eq!(r.state(), pb::JobState::Failed, "{r:?}");
    assert!(
        r.message.contains("not a plain relative path"),
        "{}",
        r.message
    );
    assert!(!n.agent.root_path("/var/x.txt").exists());
    // Nothing so far stopped etcd or touched its data.
    assert!(n.systemctl_calls().is_empty(), "{:?}", n.systemctl_calls());
    assert_eq!(n.db(), "the old data");
    assert_eq!(n.beside(), ["etcd"]);

    // etcd will not stop: the restore fails, the data stays.
    n.agent.commands.answer_with(|c| {
        Ok(if c.args.first().is_some_and(|a| a == "stop") {
            output(1, "", "Failed to stop etcd.service: Access denied\n")
        } else {
            output(0, "", "")
        })
    });
    let r = n.restore(&digest, size, "/var/lib/etcd").await;
    assert_eq!(r.state(), pb::JobState::Failed, "{r:?}");
    assert!(r.message.contains("Access denied"), "{}", r.message);
    assert_eq!(n.db(), "the old data");
    assert_eq!(n.beside(), ["etcd"], "no staged directory left");

    // Then it works: stop, swap (the old data kept), start — in that order.
    n.agent.commands.answer_with(|_| Ok(output(0, "", "")));
    let r = n.restore(&digest, size, "/var/lib/etcd").await;
    assert_eq!(r.state(), pb::JobState::Succeeded, "{r:?}");
    assert_eq!(n.db(), "restored");
    let beside = n.beside();
    assert_eq!(beside.len(), 2, "{beside:?}");
    assert!(beside[1].starts_with("etcd.before-restore-"), "{beside:?}");
    let kept = n
        .agent
        .root_path(&format!("/var/lib/{}/member/snap/db", beside[1]));
    assert_eq!(std::fs::read_to_string(kept).unwrap(), "the old data");
    assert_eq!(
        n.systemctl_calls(),
        [
            "stop etcd.service",
            "stop etcd.service",
            "start etcd.service"
        ],
        "the failed stop, then stop and start"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(n.agent.root_path("/var/lib/etcd"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}
