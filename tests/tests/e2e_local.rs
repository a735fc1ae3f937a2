//! End to end on real nodes: `pangaea-ctl up` boots three systemd-nspawn machines that run
//! cloud-init, install the agent from the controller, join over mutual TLS and form a real
//! etcd cluster with TLS from the etcd CA (etcd delivered as an artifact through the
//! controller's mirror: here Debian's etcd-server binary, as no release can be fetched).
//! Then the faults: a crashed node (quorum holds, `status` shows it down within 30 s, it
//! comes back with the same identity and catches up), a reboot, and the controller going
//! away (nodes keep serving; agents reconnect by themselves).
//!
//! Needs root and: apt-get install systemd-container debootstrap etcd-server etcd-client
//! (`.ci/run` installs them). The node image is built once into /var/cache/pangaea/images.

use pangaea_controller::provider::local::Local;
use pangaea_controller::state_dir::StateDir;
use pangaea_controller::status::NodeStatus;
use pangaea_tests::{binary, output_text as text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Each run gets its own cluster name and node network (from its PID), so two runs on one
/// host (two CI jobs, a developer and CI) never collide on names, addresses or ports.
fn run_id() -> u32 {
    std::process::id() % 250
}

fn cluster_name() -> String {
    format!("e2e{}", run_id())
}

fn network() -> String {
    format!("10.231.{}.0/24", run_id())
}

fn node_ip(n: u8) -> String {
    format!("10.231.{}.{}", run_id(), 10 + n)
}

struct Cluster {
    dir: tempfile::TempDir,
    ctl: PathBuf,
}

impl Cluster {
    fn ctl(&self, args: &[&str]) -> Output {
        pangaea_tests::run_ctl(&self.ctl, self.dir.path(), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        pangaea_tests::ctl_ok(&self.ctl, self.dir.path(), args)
    }

    fn etcdctl_env(&self) -> Vec<(String, String)> {
        self.ok(&["env", "etcdctl"])
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .envs(self.etcdctl_env())
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .output()
            .unwrap()
    }

    /// etcdctl against some members only.
    fn etcdctl_on(&self, endpoints: &str, args: &[&str]) -> Output {
        self.etcdctl_as(endpoints, &[], args)
    }

    /// etcdctl against some members, with some `ETCDCTL_*` variables replaced (another
    /// client certificate).
    fn etcdctl_as(&self, endpoints: &str, env: &[(&str, &Path)], args: &[&str]) -> Output {
        Command::new("etcdctl")
            .envs(self.etcdctl_env())
            .env("ETCDCTL_ENDPOINTS", endpoints)
            .envs(env.iter().copied())
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self) -> Vec<NodeStatus> {
        pangaea_tests::ctl_status(&self.ctl, self.dir.path())
    }

    fn node(&self, name: &str) -> NodeStatus {
        self.status()
            .into_iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in status"))
    }

    /// The etcd leader's node, as `status` shows it.
    fn leader(&self) -> String {
        self.status()
            .into_iter()
            .find(|n| n.etcd.is_leader())
            .expect("etcd has a leader")
            .name
    }

    fn state(&self) -> StateDir {
        StateDir::new(self.dir.path().join(".pangaea"))
    }

    /// Destroys a node: a power cut, then its machine and disk deleted.
    fn destroy(&self, node: &str) {
        use pangaea_controller::provider::Provider;
        self.crash(node);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.local().delete(&node.parse().unwrap()))
            .unwrap();
    }

    /// The cluster's local provider, as the test sees it.
    fn local(&self) -> Local {
        let cidr = pangaea_compiler::cidr::Cidr::parse(&network()).unwrap();
        Local::new(
            &cluster_name(),
            cidr,
            &self.state(),
            Path::new("/var/cache/pangaea/images"),
        )
    }

    /// Crashes a node the way a power cut would.
    fn crash(&self, node: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.local().crash(&node.parse().unwrap()))
            .unwrap();
    }

    /// Runs `argv` inside a running node; `None` while it does not run.
    fn exec(&self, node: &str, argv: &[&str]) -> Option<Output> {
        let cmd = self.local().exec_argv(&node.parse().unwrap(), argv)?;
        Command::new(&cmd[0]).args(&cmd[1..]).output().ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the nodes and the controller said, before the evidence is purged.
            let state = self.state();
            let mut logs: Vec<PathBuf> = std::fs::read_dir(state.nodes())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("console.log"))
                .collect();
            logs.push(state.serve_log());
            pangaea_tests::print_log_tails(&logs, 40);
        }
        let out = self.ctl(&["down", "--purge"]);
        if !out.status.success() {
            eprintln!(
                "cleanup: down --purge failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A child process killed (and reaped) when dropped, a failing test included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client writing keys `add-remove/N` one after another to etcd until stopped, keeping
/// the keys etcd acknowledged.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Writer {
    fn start(env: Vec<(String, String)>, endpoints: String) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            let mut n = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("add-remove/{n:06}");
                let out = Command::new("etcdctl")
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .env("ETCDCTL_ENDPOINTS", &endpoints)
                    .args([
                        "--dial-timeout=2s",
                        "--command-timeout=3s",
                        "put",
                        &key,
                        "v",
                    ])
                    .output()
                    .unwrap();
                if out.status.success() {
                    acknowledged.push(key);
                }
            }
            acknowledged
        });
        Writer { stop, thread }
    }

    /// Stops writing; the keys etcd acknowledged.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn eventually<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    pangaea_tests::poll_until(what, timeout, Duration::from_millis(250), f)
}

#[test]
fn up_forms_an_etcd_cluster_that_survives_node_and_controller_faults() {
    pangaea_tests::require_node_host();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pangaea.yaml"),
        pangaea_tests::etcd_only_config(&cluster_name(), &network(), ""),
    )
    .unwrap();
    let c = Cluster {
        dir,
        ctl: binary("pangaea-ctl"),
    };
    assert!(binary("pangaea-agent").is_file());

    // 1. Up from nothing (the image may be built now, once).
    let out = c.ok(&["up", "--timeout", "240s"]);
    assert!(out.contains("3 nodes healthy"), "{out}");
    assert!(
        out.contains("not started, program not installed: kube-apiserver.service"),
        "up says plainly what could not start: {out}"
    );
    // Hardening #1: nothing under the state directory (PKI, secrets, store, the nodes'
    // disks with their keys) is readable by another local user.
    let state_files = pangaea_tests::files_below(c.state().path());
    assert!(state_files.len() > 50, "{} files", state_files.len());
    assert_eq!(
        pangaea_tests::readable_by_nobody(&state_files),
        Vec::<String>::new(),
        "files of the state directory readable by another user after up"
    );
    // Idempotent: a second `up` on a healthy cluster creates nothing.
    let again = c.ok(&["up"]);
    assert!(
        !again.contains("creating") && !again.contains("booting"),
        "{again}"
    );

    // 2. A real etcd cluster with TLS from the etcd CA.
    let health = c.etcdctl(&["endpoint", "health"]);
    assert!(health.status.success(), "{}", text(&health));
    assert_eq!(
        text(&health).matches("is healthy").count(),
        3,
        "{}",
        text(&health)
    );
    assert!(c.etcdctl(&["put", "before", "1"]).status.success());
    // etcd refuses a client without a certificate from the etcd CA.
    let anonymous = Command::new("etcdctl")
        .envs(
            c.etcdctl_env()
                .into_iter()
                .filter(|(k, _)| k != "ETCDCTL_CERT" && k != "ETCDCTL_KEY"),
        )
        .args(["--dial-timeout=2s", "--command-timeout=3s", "get", "before"])
        .output()
        .unwrap();
    assert!(
        !anonymous.status.success(),
        "etcd served a client without a certificate: {}",
        text(&anonymous)
    );
    // The boot timeline: created → joined → applied → healthy, in order.
    let tl = c.node("node-1").timeline;
    let created = tl.created_at.unwrap_or(0);
    assert!(
        created > 0
            && created <= tl.joined_at
            && tl.joined_at <= tl.first_applied_at
            && tl.first_applied_at <= tl.healthy_at,
        "{tl:?}"
    );
    assert!(
        c.ok(&["status"]).contains("timeline: created"),
        "status shows the timeline"
    );
    // Membership and leader as etcd reports them: three members, one leader.
    let status = c.status();
    assert_eq!(
        status.iter().filter(|n| n.etcd.member().is_some()).count(),
        3,
        "{status:?}"
    );
    assert_eq!(
        status.iter().filter(|n| n.etcd.is_leader()).count(),
        1,
        "{status:?}"
    );
    // Held-back units are reported with their reason, not as failures.
    let held: Vec<_> = status[0]
        .units
        .iter()
        .filter_map(|u| u.not_started.as_ref().map(|n| (u.name.as_str(), n)))
        .collect();
    assert!(
        held.iter().any(|(u, n)| *u == "kube-apiserver.service"
            && n.reason == "program not installed"
            && n.detail.ends_with("/kube-apiserver")),
        "{held:?}"
    );
    let tokens_before = c.ok(&["token", "list"]).lines().count();
    let node3 = c.node("node-3");

    // 2b. An API endpoint that survives any node: the admin kubeconfig names the
    // controller's load balancer over the control-plane nodes' port 6443. No API server can
    // run here, so stand-ins answer on that port in two nodes' network namespaces: the
    // operator's connections reach both, and only the other once one is lost.
    let proxy = std::fs::read_to_string(c.state().api_proxy_addr())
        .unwrap()
        .trim()
        .to_owned();
    let kubeconfig = std::fs::read_to_string(c.state().admin_kubeconfig()).unwrap();
    assert!(
        kubeconfig.contains(&format!("server: https://{proxy}")),
        "{kubeconfig}"
    );
    let stand_in = |n: u8| {
        let code = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{}',6443))\ns.listen()\nwhile True:\n  c,_=s.accept(); c.sendall(b'node-{n}'); c.close()\n",
            node_ip(n)
        );
        KillOnDrop(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &format!("pangaea-{}-node-{n}", cluster_name()),
                ])
                .args(["python3", "-c", &code])
                .spawn()
                .unwrap(),
        )
    };
    let ask = || {
        let mut s = std::net::TcpStream::connect(&proxy).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).ok()?;
        (!out.is_empty()).then_some(out)
    };
    let (api_1, api_2) = (stand_in(1), stand_in(2));
    // Both are reached once the balancer's health checks (every 2 s) have seen them up.
    let mut answers = std::collections::BTreeSet::new();
    eventually(
        "connections to reach both API servers",
        Duration::from_secs(20),
        || {
            answers.extend(ask());
            (answers.len() == 2).then_some(())
        },
    );
    assert_eq!(
        answers.into_iter().collect::<Vec<_>>(),
        ["node-1", "node-2"],
        "round the API servers"
    );
    drop(api_1);
    for _ in 0..6 {
        assert_eq!(ask().as_deref(), Some("node-2"), "node-1's API server lost");
    }
    drop(api_2);

    // 3. Kill node-3: quorum holds, status shows it down within 30 s.
    c.crash("node-3");
    // If node-3 led, the other two elect a new leader first (about a second).
    eventually(
        "a write through the two remaining members",
        Duration::from_secs(20),
        || {
            let put = c.etcdctl_on(
                &format!("https://{}:2379,https://{}:2379", node_ip(1), node_ip(2)),
                &["put", "during", "2"],
            );
            put.status.success().then_some(())
        },
    );
    let t = Instant::now();
    eventually(
        "status to show node-3 down",
        Duration::from_secs(30),
        || c.node("node-3").state.starts_with("down").then_some(()),
    );
    eprintln!("node-3 shown down after {:.1}s", t.elapsed().as_secs_f64());

    // 4. `up` boots it again: same identity, no new token, etcd catches up.
    let out = c.ok(&["up", "--timeout", "120s"]);
    assert!(out.contains("node-3: booting"), "{out}");
    let back = c.node("node-3");
    assert_eq!(back.instance_id, node3.instance_id);
    assert_eq!(
        c.ok(&["token", "list"]).lines().count(),
        tokens_before,
        "no new token for a returning node"
    );
    eventually("node-3's etcd to catch up", Duration::from_secs(30), || {
        let o = c.etcdctl_on(
            &format!("https://{}:2379", node_ip(3)),
            &["get", "during", "--print-value-only"],
        );
        (o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "2").then_some(())
    });

    // 5. Reboot node-2: it comes back by itself (no `up`), same certificate.
    let serial = c.node("node-2").certificate_not_after;
    c.ok(&["node", "reboot", "node-2"]);
    eventually(
        "node-2 healthy after its reboot",
        Duration::from_secs(60),
        || (c.node("node-2").state == "healthy").then_some(()),
    );
    assert_eq!(
        c.node("node-2").certificate_not_after,
        serial,
        "a reboot must not re-join"
    );

    // 6. Controller down: the nodes keep serving; when it returns, agents reconnect.
    let pid = std::fs::read_to_string(c.state().serve_pid()).unwrap();
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.trim())
            .status()
            .unwrap()
            .success()
    );
    eventually("the controller to stop", Duration::from_secs(10), || {
        (!c.state().socket().exists()).then_some(())
    });
    let health = c.etcdctl(&["endpoint", "health"]);
    assert!(
        health.status.success(),
        "etcd must not depend on the controller: {}",
        text(&health)
    );
    let reported = c.node("node-1").last_report_at;
    c.ok(&["up", "--timeout", "120s"]);
    eventually(
        "agents to report to the restarted controller",
        Duration::from_secs(60),
        || {
            c.status()
                .iter()
                .all(|n| n.last_report_at > reported)
                .then_some(())
        },
    );

    // 6b. Lifecycle: the node-loss drill crashes the etcd leader while writing through the
    // others; writes come back (its figure goes to BENCHMARKS.md, not into a timed
    // assertion) and the node comes back healthy.
    let out = c.ctl(&["drill", "node-loss", "-o", "json"]);
    assert!(out.status.success(), "drill: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("drill -o json: {e}: {}", text(&out)));
    eprintln!("node-loss drill: {report}");
    assert_eq!(report["was_leader"], true, "{report}");
    assert!(report["writes_ok"].as_u64().unwrap() > 10, "{report}");
    assert!(
        report["write_unavailable_ms"].as_u64().unwrap() < 30_000,
        "writes came back: {report}"
    );
    assert!(report["back_healthy_ms"].is_u64(), "{report}");

    // 6c. Lifecycle: `reboot` reboots every node in turn, the etcd leader last, each back
    // from a new boot (and etcd whole) before the next; the data is there.
    let leader = c.leader();
    let rebooted = c.ok(&["reboot"]);
    let order: Vec<&str> = rebooted
        .lines()
        .filter_map(|l| l.strip_prefix("==> ")?.strip_suffix(": rebooting"))
        .collect();
    assert_eq!(order.len(), 3, "{rebooted}");
    assert_eq!(
        order.last(),
        Some(&leader.as_str()),
        "leader last: {rebooted}"
    );
    assert_eq!(
        rebooted.matches("healthy from a new boot").count(),
        3,
        "{rebooted}"
    );
    assert!(c.etcdctl(&["get", "before"]).status.success());

    // 6d. Lifecycle: 3 → 5 with `node add` (each new etcd member a learner, promoted once
    // caught up) and back 5 → 3 with `node remove`, while a client keeps writing: every
    // acknowledged write is there at the end. 5 → 4 leaves an even number: refused without
    // --force, like 3 → 2 in step 7.
    let writer = Writer::start(
        c.etcdctl_env(),
        format!(
            "https://{}:2379,https://{}:2379,https://{}:2379",
            node_ip(1),
            node_ip(2),
            node_ip(3)
        ),
    );
    let added = c.ok(&["node", "add", "--count", "2"]);
    eprintln!("node add --count 2:\n{added}");
    for (n, name) in [(4, "node-4"), (5, "node-5")] {
        assert!(
            added.contains(&format!("{name}: etcd learner"))
                && added.contains(&format!("(peer URL https://{}:2380)", node_ip(n))),
            "{name} joined as a learner: {added}"
        );
        assert!(
            added.contains(&format!("{name}: voting etcd member")),
            "{added}"
        );
    }
    assert!(added.contains("5 nodes healthy"), "{added}");
    let list = text(&c.etcdctl(&["member", "list"]));
    assert_eq!(list.lines().count(), 5, "{list}");
    assert!(!list.contains("true"), "no learner left: {list}");
    let yaml = std::fs::read_to_string(c.dir.path().join("pangaea.yaml")).unwrap();
    assert!(
        yaml.contains("    count: 5\n"),
        "the pool's count is recorded: {yaml}"
    );
    // Idempotent: `up` now creates nothing and joins nothing.
    let again = c.ok(&["up"]);
    assert!(
        !again.contains("creating") && !again.contains("learner"),
        "{again}"
    );
    let refused = c.ctl(&["node", "remove", "node-5"]);
    assert!(
        !refused.status.success() && text(&refused).contains("4 members would be left"),
        "{}",
        text(&refused)
    );
    c.ok(&["node", "remove", "node-5", "--force"]);
    c.ok(&["node", "remove", "node-4"]);
    let acknowledged = writer.stop();
    assert!(acknowledged.len() > 20, "{} writes", acknowledged.len());
    let stored = c.etcdctl(&["get", "add-remove/", "--prefix", "--keys-only"]);
    let stored: std::collections::BTreeSet<&str> = std::str::from_utf8(&stored.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(k.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    eprintln!(
        "3 → 5 → 3: {} acknowledged writes, none lost",
        acknowledged.len()
    );
    assert_eq!(text(&c.etcdctl(&["member", "list"])).lines().count(), 3);

    // 7. Lifecycle: `node remove`, and hardening #3 (a removed node's etcd certificates
    // are refused within 10 s: the members read the etcd CA's revocation list on each new
    // connection, no restart).
    let kept = tempfile::tempdir().unwrap();
    let issued = c.state().issued("node-3/apiserver-etcd-client");
    let (cert, key) = (kept.path().join("c.crt"), kept.path().join("c.key"));
    std::fs::copy(&issued.cert, &cert).unwrap();
    std::fs::copy(&issued.key, &key).unwrap();
    let members = format!("https://{}:2379,https://{}:2379", node_ip(1), node_ip(2));
    let as_node_3 = || {
        c.etcdctl_as(
            &members,
            &[("ETCDCTL_CERT", &cert), ("ETCDCTL_KEY", &key)],
            &["--dial-timeout=1s", "--command-timeout=1s", "get", "before"],
        )
    };
    let before = as_node_3();
    assert!(before.status.success(), "before removal: {}", text(&before));
    let member_list = || {
        let out = c.etcdctl_on(&members, &["member", "list"]);
        assert!(out.status.success(), "member list: {}", text(&out));
        text(&out)
    };
    let node_3_peer = format!("https://{}:2380", node_ip(3));
    assert!(member_list().contains(&node_3_peer));

    // 3 → 2 members counts as unsafe: refused without --force, saying why; nothing changes.
    let refused = c.ctl(&["node", "remove", "node-3"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("2 members would be left") && text(&refused).contains("--force"),
        "{}",
        text(&refused)
    );
    assert_eq!(member_list().lines().count(), 3);
    // --dry-run prints the steps and whether etcd would allow it now; changes nothing.
    let plan = c.ok(&["node", "remove", "node-3", "--force", "--dry-run"]);
    for s in [
        "drain",
        "etcd-member",
        "credentials",
        "instance",
        "config",
        "allowed now",
    ] {
        assert!(plan.contains(s), "{s:?} not in {plan}");
    }
    // The same for scripts: the steps by name, etcd's answer as a field, refused without
    // --force (3 → 2) and allowed with it.
    let preview = |force: bool| -> serde_json::Value {
        let mut args = vec!["node", "remove", "node-3", "--dry-run", "-o", "json"];
        if force {
            args.push("--force");
        }
        let out = c.ctl(&args);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("--dry-run -o json")
    };
    let forced = preview(true);
    let steps: Vec<&str> = forced["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["drain", "etcd-member", "credentials", "instance", "config"],
        "{forced}"
    );
    assert_eq!(forced["node"], "node-3");
    assert_eq!(forced["steps"][1]["etcd"]["allowed"], true, "{forced}");
    let unforced = preview(false);
    assert_eq!(unforced["steps"][1]["etcd"]["allowed"], false, "{unforced}");
    assert!(
        unforced["steps"][1]["etcd"]["detail"]
            .as_str()
            .unwrap()
            .contains("2 members would be left"),
        "{unforced}"
    );
    let journal = c.state().removal_journal("node-3");
    assert!(!journal.exists());

    // Killed with SIGKILL right after each recorded step, then run again: it resumes.
    let config = c.dir.path().join("pangaea.yaml");
    let mut revoked_at = None;
    for after in ["drain", "etcd-member", "credentials", "instance"] {
        let out = std::process::Command::new(&c.ctl)
            .current_dir(c.dir.path())
            .env("NO_COLOR", "1")
            .env("PANGAEA_FAILPOINT", format!("remove-after:{after}"))
            .args(["node", "remove", "node-3", "--force"])
            .output()
            .unwrap();
        eprintln!("node remove, killed after {after}:\n{}", text(&out));
        assert!(
            !out.status.success(),
            "not killed after {after}: {}",
            text(&out)
        );
        assert!(
            journal.exists(),
            "the journal survives the kill after {after}"
        );
        match after {
            // No Kubernetes API runs here: the drain says so and holds back the kubelet.
            "drain" => assert!(
                text(&out).contains("no Kubernetes API reachable") && c.node("node-3").drained,
                "{}",
                text(&out)
            ),
            "etcd-member" => {
                let list = member_list();
                assert_eq!(list.lines().count(), 2, "{list}");
                assert!(!list.contains(&node_3_peer), "{list}");
            }
            "credentials" => revoked_at = Some(std::time::Instant::now()),
            _ => {}
        }
    }
    // The time a refused attempt started: the attempt itself waits for its timeouts.
    let revoked_at = revoked_at.unwrap();
    let refused_at = eventually(
        "the remaining members to refuse node-3's etcd client certificate",
        Duration::from_secs(10),
        || {
            let tried = revoked_at.elapsed();
            (!as_node_3().status.success()).then_some(tried)
        },
    );
    eprintln!("refused from {refused_at:?} after the credentials step");
    assert!(
        !c.state().path().join("nodes/node-3").exists(),
        "the instance's files are gone"
    );
    let done = c.ok(&["node", "remove", "node-3", "--force"]);
    assert!(done.contains("node node-3 removed"), "{done}");
    assert!(!journal.exists(), "the finished journal is removed");
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(
        yaml.contains("removedNodes: [node-5, node-4, node-3]"),
        "{yaml}"
    );
    // Idempotent, and a later `up` does not bring node-3 back.
    assert!(
        c.ok(&["node", "remove", "node-3"])
            .contains("already removed")
    );
    let up = c.ok(&["up"]);
    assert!(!up.contains("node-3"), "{up}");
    assert_eq!(member_list().lines().count(), 2);
    let mine = c.etcdctl_on(&members, &["get", "before"]);
    assert!(
        mine.status.success(),
        "the operator's client: {}",
        text(&mine)
    );

    // 8. Lifecycle: `stop` powers the nodes off with the etcd leader last; `start` boots
    // them with their disks, and the data is there.
    let leader = c.leader();
    let stopped = c.ok(&["stop"]);
    let order: Vec<&str> = stopped
        .lines()
        .filter_map(|l| l.strip_prefix("==> ")?.strip_suffix(": stopping"))
        .collect();
    assert_eq!(order.len(), 2, "{stopped}");
    assert_eq!(
        order.last(),
        Some(&leader.as_str()),
        "leader last: {stopped}"
    );
    assert!(
        !c.state().path().join("nodes/node-1/nspawn.pid").exists()
            || std::fs::read_to_string(c.state().path().join("nodes/node-1/nspawn.pid"))
                .is_ok_and(|p| !Path::new(&format!("/proc/{}", p.trim())).exists()),
        "node-1 is off"
    );
    let started = c.ok(&["start"]);
    assert!(started.contains("booting (existing disk)"), "{started}");
    assert!(!started.contains("creating"), "{started}");
    let after = c.etcdctl_on(&members, &["get", "before"]);
    assert!(
        after.status.success() && text(&after).contains("before"),
        "the data survives stop and start: {}",
        text(&after)
    );

    // 8b. Lifecycle: every node rebooted at once from inside (`systemctl reboot` in each, no
    // pangaea-ctl): the local provider starts each machine again when it asks to reboot, and
    // the cluster comes back by itself, data kept.
    let nodes = ["node-1", "node-2"];
    for n in nodes {
        let marked = c.exec(n, &["/bin/sh", "-c", "touch /run/before-reboot"]);
        assert!(marked.is_some_and(|o| o.status.success()), "{n}: mark /run");
    }
    for n in nodes {
        let cmd = c
            .local()
            .exec_argv(&n.parse().unwrap(), &["systemctl", "reboot"])
            .unwrap();
        // The node goes down under the command; its outcome does not matter.
        let _ = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let t = Instant::now();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for n in nodes {
        eventually(
            &format!("{n} back from its reboot (a fresh /run) and healthy"),
            Duration::from_secs(120),
            || {
                let fresh = c
                    .exec(n, &["/bin/sh", "-c", "test ! -e /run/before-reboot"])
                    .is_some_and(|o| o.status.success());
                let s = c.node(n);
                (fresh && s.state == "healthy" && s.last_report_at > since).then_some(())
            },
        );
    }
    eprintln!(
        "all nodes back from a reboot at once in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    eventually(
        "etcd to serve after the reboot",
        Duration::from_secs(30),
        || {
            c.etcdctl_on(&members, &["get", "before"])
                .status
                .success()
                .then_some(())
        },
    );

    // 8c. Lifecycle: a power cut — every node and the controller daemon killed at once, and
    // /run's network namespaces and the bridge gone (a host reboot) — then `up`: the same
    // nodes boot with their disks, no new token, the data is there.
    let tokens = c.ok(&["token", "list"]).lines().count();
    for n in ["node-1", "node-2"] {
        c.crash(n);
    }
    let pid = std::fs::read_to_string(c.state().serve_pid()).unwrap();
    assert!(
        Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    let netns = text(&Command::new("ip").args(["netns", "list"]).output().unwrap());
    for ns in netns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("pangaea-{}-", cluster_name())))
    {
        assert!(
            Command::new("ip")
                .args(["netns", "del", ns])
                .status()
                .unwrap()
                .success()
        );
    }
    let host = node_ip(1).rsplit_once('.').unwrap().0.to_owned() + ".1";
    let bridge = text(
        &Command::new("ip")
            .args(["-o", "-4", "addr", "show", "to", &format!("{host}/32")])
            .output()
            .unwrap(),
    );
    let bridge = bridge
        .split_whitespace()
        .nth(1)
        .expect("the bridge")
        .to_owned();
    assert!(
        Command::new("ip")
            .args(["link", "del", &bridge])
            .status()
            .unwrap()
            .success()
    );
    let back = c.ok(&["up", "--timeout", "180s"]);
    assert!(
        back.contains("2 nodes healthy") && !back.contains("creating"),
        "{back}"
    );
    assert_eq!(
        c.ok(&["token", "list"]).lines().count(),
        tokens,
        "no new token after a power cut"
    );
    let after = c.etcdctl_on(&members, &["get", "before"]);
    assert!(
        after.status.success() && text(&after).contains("before"),
        "the data survives a power cut: {}",
        text(&after)
    );

    // 9. Disaster recovery: a snapshot from the running cluster that etcd's tool reads.
    let snap = c.dir.path().join("etcd.snapshot");
    let saved = c.ok(&["etcd", "snapshot", "save", snap.to_str().unwrap()]);
    assert!(saved.contains("SHA-256 trailer checked"), "{saved}");
    let status = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status));

    // 10. Disaster recovery: back to three etcd members, then two of them destroyed (quorum
    // lost for good); `etcd snapshot restore` rebuilds etcd from the snapshot on the
    // survivor, the destroyed nodes are created again and join it. The data is the
    // snapshot's: a key written before it is there, one written after it is not.
    let added = c.ok(&["node", "add"]);
    assert!(added.contains("node-6: voting etcd member"), "{added}");
    let put = c.etcdctl(&["put", "after-snapshot", "x"]);
    assert!(put.status.success(), "{}", text(&put));
    // Refused while etcd has a leader, and a torn snapshot is refused before anything.
    let refused = c.ctl(&["etcd", "snapshot", "restore", snap.to_str().unwrap()]);
    assert!(
        !refused.status.success() && text(&refused).contains("still has a leader"),
        "{}",
        text(&refused)
    );
    let torn = c.dir.path().join("torn.snapshot");
    let bytes = std::fs::read(&snap).unwrap();
    std::fs::write(&torn, &bytes[..bytes.len() - 100]).unwrap();
    let refused = c.ctl(&[
        "etcd",
        "snapshot",
        "restore",
        torn.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        !refused.status.success() && text(&refused).contains("not a whole etcd snapshot"),
        "{}",
        text(&refused)
    );
    for n in ["node-2", "node-6"] {
        c.destroy(n);
    }
    let restored = c.ok(&["etcd", "snapshot", "restore", snap.to_str().unwrap()]);
    eprintln!("etcd snapshot restore:\n{restored}");
    assert!(restored.contains("etcd restored from"), "{restored}");
    for n in ["node-2", "node-6"] {
        assert!(
            restored.contains(&format!("{n}: voting etcd member")),
            "{n} joined the restored member: {restored}"
        );
    }
    let list = text(&c.etcdctl(&["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains("true"), "no learner left: {list}");
    let before = c.etcdctl(&["get", "before", "--print-value-only"]);
    assert!(
        before.status.success() && !text(&before).trim().is_empty(),
        "the key written before the snapshot: {}",
        text(&before)
    );
    let after = c.etcdctl(&["get", "after-snapshot", "--print-value-only"]);
    assert!(
        after.status.success() && text(&after).trim().is_empty(),
        "the key written after the snapshot is not in the restored data: {}",
        text(&after)
    );

    // 10b. A node destroyed behind pangaea-ctl's back (its machine and disk gone, its etcd
    // member still listed): `up` creates it again, and since its data is gone its old member
    // is removed and it joins afresh as a learner — it never votes with an empty log.
    let old_id = text(&c.etcdctl(&["member", "list"]))
        .lines()
        .find(|l| l.contains(", node-6,"))
        .and_then(|l| l.split(',').next())
        .expect("node-6 is a member")
        .to_owned();
    c.destroy("node-6");
    let again = c.ok(&["up", "--timeout", "180s"]);
    assert!(
        again.contains(&format!(
            "node-6: its old etcd member {old_id} lost its data"
        )),
        "{again}"
    );
    assert!(again.contains("node-6: voting etcd member"), "{again}");
    let list = text(&c.etcdctl(&["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains(&old_id) && !list.contains("true"), "{list}");

    // 11. Disaster recovery of the operator's side: an encrypted backup of .pangaea/ taken
    // while the controller runs; after `stop`, restored over the directory (the old one
    // kept aside, the nodes' disks kept in place), and the cluster starts from it.
    let backup = c.dir.path().join("cluster.age");
    let pass = c.dir.path().join("passphrase");
    std::fs::write(&pass, "a long enough passphrase\n").unwrap();
    let (backup_s, pass_s) = (backup.to_str().unwrap(), pass.to_str().unwrap());
    let saved = c.ok(&["backup", backup_s, "--passphrase-file", pass_s]);
    assert!(saved.contains("encrypted (age, passphrase)"), "{saved}");
    c.ok(&["stop"]);
    let restored = c.ok(&["restore", backup_s, "--passphrase-file", pass_s, "--force"]);
    assert!(
        restored.contains("the previous directory is kept at"),
        "{restored}"
    );
    let started = c.ok(&["start"]);
    assert!(started.contains("3 nodes healthy"), "{started}");
    assert!(
        c.etcdctl(&["get", "before"]).status.success(),
        "etcd serves after the restore"
    );
}
