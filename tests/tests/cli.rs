//! End to end through the real binaries, as an operator uses them: `pangaea-ctl serve` on
//! loopback, the PKI and token commands through its admin socket, one `pangaea-agent` that
//! joins and applies its assignment, node removal, the state lock, and shutdown.
//!
//! The binaries are taken from the target directory beside this test executable, so
//! `cargo test --workspace` (or `cargo build --workspace` first) must have built them.

use pangaea_tests::{binary, run_ctl};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any one wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);
const STEP: Duration = Duration::from_millis(25);

/// Calls `f` every [`STEP`] until it returns `Some`, failing with `what` after [`DEADLINE`].
fn poll<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    pangaea_tests::poll_until(what, DEADLINE, STEP, f)
}

/// A background process, killed (and reaped) when dropped, even when the test panics; then
/// its log, if it has one, is printed to help explain the failure.
struct Proc {
    name: &'static str,
    child: Child,
    log: Option<PathBuf>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Proc {
        let out = File::create(log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name,
            child,
            log: Some(log.to_owned()),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("{} exited early ({status})", self.name);
        }
    }

    /// Waits for the process to exit on its own, at most [`DEADLINE`].
    fn wait_exit(&mut self) -> ExitStatus {
        let name = self.name;
        poll(&format!("{name} to exit"), || {
            self.child.try_wait().expect("try_wait")
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(log) = self.log.as_deref().filter(|_| std::thread::panicking()) {
            eprintln!("--- {} log ({}):\n{}", self.name, log.display(), read(log));
        }
    }
}

/// Runs `cmd` to completion within [`DEADLINE`] (killing it otherwise) and returns its
/// output. Output goes through anonymous files, so a chatty child never blocks on a pipe.
fn run_bounded(mut cmd: Command) -> Output {
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(err.try_clone().expect("clone"))
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let mut proc = Proc {
        name: "command",
        child,
        log: None,
    };
    let status = poll(&format!("{cmd:?} to finish"), || {
        proc.child.try_wait().expect("try_wait")
    });
    let slurp = |f: &mut File| {
        let mut v = Vec::new();
        f.rewind().expect("rewind");
        f.read_to_end(&mut v).expect("read output");
        v
    };
    Output {
        status,
        stdout: slurp(&mut out),
        stderr: slurp(&mut err),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// `pangaea-ctl --state-dir <state> ...`.
struct Ctl {
    bin: PathBuf,
    state: PathBuf,
}

impl Ctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        let config = self
            .state
            .parent()
            .expect("state dir has a parent")
            .join("pangaea.yaml");
        c.arg("--state-dir")
            .arg(&self.state)
            .arg("--config")
            .arg(config)
            .args(args);
        c.env("NO_COLOR", "1");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.command(args))
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "pangaea-ctl {args:?} failed: {}",
            show(&o)
        );
        text(&o.stdout)
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "pangaea-ctl {args:?} should have failed: {}",
            show(&o)
        );
        text(&o.stderr)
    }

    fn status_json(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["status", "-o", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status -o json: {e}: {out}"))
    }

    /// The STATE column of `token list` for token `id`.
    fn token_state(&self, id: &str) -> String {
        let list = self.ok(&["token", "list"]);
        let row = list
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&id))
            .unwrap_or_else(|| panic!("token {id} not in `token list`:\n{list}"));
        assert_eq!(row.len(), 5, "unexpected `token list` row {row:?}:\n{list}");
        row[4].to_owned()
    }
}

fn is_token(t: &str) -> bool {
    let lower_alnum = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(t.split_once('.'), Some((id, secret))
        if id.len() == 6 && secret.len() == 16 && lower_alnum(id) && lower_alnum(secret))
}

/// Stand-ins for the pinned release downloads (no registry carries them here): archives
/// with the member paths the real ones have, and single files for the Kubernetes binaries
/// and runc, served from `file://` through overrides in `pangaea.yaml`, each with its own
/// digest. Returns the overrides.
fn offline_artifacts(dir: &Path) -> String {
    let src = dir.join("release");
    let mut yaml = String::from("artifacts:\n");
    let mut add = |name: &str, file: &Path| {
        let out = Command::new("sha256sum")
            .arg(file)
            .output()
            .expect("sha256sum");
        let sum = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        yaml.push_str(&format!(
            "  - name: {name}\n    url: file://{}\n    digest: sha256:{sum}\n",
            file.display()
        ));
    };
    let archives: [(&str, &str, &[&str]); 4] = [
        (
            "etcd",
            "etcd",
            &[
                "etcd-v3.5.27-linux-amd64/etcd",
                "etcd-v3.5.27-linux-amd64/etcdctl",
            ],
        ),
        (
            "containerd",
            "containerd",
            &["bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"],
        ),
        (
            "cni-plugins",
            "cni",
            &["./bridge", "./host-local", "./loopback", "./portmap"],
        ),
        ("crictl", "crictl", &["crictl"]),
    ];
    for (name, sub, members) in archives {
        let root = src.join(sub);
        for m in members {
            let p = root.join(m);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("#!/bin/sh\necho {m}\n")).unwrap();
        }
        let archive = src.join(format!("{name}.tar.gz"));
        let ok = Command::new("tar")
            .arg("czf")
            .arg(&archive)
            .arg("-C")
            .arg(&root)
            .args(members.iter())
            .status()
            .expect("tar");
        assert!(ok.success(), "tar czf {name}");
        add(name, &archive);
    }
    // Every single-file entry of the default set (the Kubernetes binaries, runc).
    let set = pangaea_compiler::artifact_set::ArtifactSet::defaults();
    let singles = set.artifacts.iter().filter(|a| a.members.is_empty());
    for single in singles.map(|a| a.name.as_str()) {
        let file = src.join(single);
        std::fs::write(&file, format!("#!/bin/sh\necho {single}\n")).unwrap();
        add(single, &file);
    }
    yaml
}

#[test]
fn operator_flow_with_real_binaries() {
    let (ctl_bin, agent_bin) = (binary("pangaea-ctl"), binary("pangaea-agent"));
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let ctl = Ctl {
        bin: ctl_bin,
        state: dir.join(".pangaea"),
    };
    std::fs::write(dir.join("pangaea.yaml"), offline_artifacts(dir)).unwrap();

    // 1. The controller, on an ephemeral loopback port it reports in serve.addr.
    let serve_log = dir.join("serve.log");
    let mut serve = Proc::spawn(
        "pangaea-ctl serve",
        ctl.command(&["serve", "--listen", "127.0.0.1:0"]),
        &serve_log,
    );
    let addr = poll("serve.addr", || {
        serve.assert_running();
        Some(read(&ctl.state.join("serve.addr")).trim().to_owned()).filter(|a| !a.is_empty())
    });
    let sock: std::net::SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("serve.addr {addr:?}: {e}"));
    assert!(sock.ip().is_loopback() && sock.port() != 0, "{sock}");

    // 2. The PKI.
    let pin = ctl.ok(&["pki", "pin"]).trim().to_owned();
    let hex = pin
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("pin {pin:?}"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "pin {pin:?}"
    );
    let table = ctl.ok(&["pki", "show"]);
    for name in [
        "controller-ca",
        "cluster-ca",
        "etcd-ca",
        "front-proxy-ca",
        "controller",
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "`pki show` lacks {name}:\n{table}"
        );
    }
    assert!(table.contains(&pin), "`pki show` lacks the pin:\n{table}");
    let json = ctl.ok(&["pki", "show", "-o", "json"]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("pki show -o json: {e}: {json}"));
    assert_eq!(rows.len(), 5, "{json}");
    assert!(rows.iter().any(|r| r["name"] == "controller"), "{json}");

    // 3. A bootstrap token, created through the daemon's admin socket.
    assert!(ctl.state.join("ctl.sock").exists(), "no admin socket");
    let token = ctl.ok(&["token", "create", "--node", "node-1"]);
    let token = token.trim();
    assert!(is_token(token), "token {token:?}");
    let id = token.split_once('.').unwrap().0;
    assert_eq!(ctl.token_state(id), "valid");

    // 4. The agent.
    let token_file = dir.join("bootstrap-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let root = dir.join("root");
    let q = |p: &Path| serde_json::to_string(p.to_str().unwrap()).unwrap();
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "controller: [\"{addr}\"]\nca_pin: \"{pin}\"\ntoken_file: {}\nnode_name: node-1\n\
             instance_id: i-1\nstate_dir: {}\nroot: {}\nfake_systemd: true\n\
             report_interval_seconds: 1\n",
            q(&token_file),
            q(&dir.join("agent-state")),
            q(&root),
        ),
    )
    .unwrap();
    let agent_log = dir.join("agent.log");
    let mut agent_cmd = Command::new(&agent_bin);
    agent_cmd.arg("--config").arg(&config).env("NO_COLOR", "1");
    let mut agent = Proc::spawn("pangaea-agent", agent_cmd, &agent_log);

    // 5. It joins, applies its assignment and reports it.
    let node = poll("node-1 to report its assignment applied", || {
        agent.assert_running();
        ctl.status_json().into_iter().find(|n| {
            let applied = n["applied_revision"].as_u64().unwrap_or(0);
            n["name"] == "node-1"
                && applied >= 1
                && n["assigned_revision"].as_u64() == Some(applied)
        })
    });
    assert_eq!(node["instance_id"], "i-1", "{node}");
    assert_eq!(node["removed"], false, "{node}");
    assert!(!token_file.exists(), "the agent kept the used token file");
    // The compiled assignment: rendered units and the artifacts' members, installed.
    let etcd_unit = read(&root.join("etc/systemd/system/etcd.service"));
    assert!(
        etcd_unit.contains("--name=node-1"),
        "etcd.service: {etcd_unit:?}"
    );
    let etcd = read(&root.join("usr/local/bin/etcd"));
    assert!(
        etcd.contains("etcd-v3.5.27-linux-amd64/etcd"),
        "etcd binary: {etcd:?}"
    );
    assert_eq!(
        read(&root.join("usr/local/sbin/runc")),
        "#!/bin/sh\necho runc\n"
    );
    assert_eq!(ctl.token_state(id), "used");

    // 6. Operator mistakes fail with a clear message and change nothing.
    let before = ctl.ok(&["token", "list"]);
    let e = ctl.fails(&["token", "create", "--ttl", "5x"]);
    assert!(e.contains("duration"), "--ttl 5x: {e}");
    let e = ctl.fails(&["token", "create", "--node", "Bad_Name"]);
    assert!(e.contains("invalid node name"), "--node Bad_Name: {e}");
    let e = ctl.fails(&["token", "revoke", "nosuch"]);
    assert!(e.contains("no token"), "revoke nosuch: {e}");
    assert_eq!(
        ctl.ok(&["token", "list"]),
        before,
        "a failed command changed the tokens"
    );

    // 7. Removing the node makes the controller refuse the agent's certificate. (The log
    // already says "removed" — "bootstrap token removed", "removed=0" — so only what the
    // agent logs after the removal counts, and it must be the refusal.)
    let logged_before = read(&agent_log).len();
    let out = ctl.ok(&["node", "remove", "node-1"]);
    assert!(out.contains("node-1"), "{out}");
    poll(
        "the agent to log that the controller refuses it as removed",
        || {
            agent.assert_running();
            let log = read(&agent_log);
            log[logged_before..]
                .lines()
                .any(|l| l.contains("refuses this node's identity") && l.contains("was removed"))
                .then_some(())
        },
    );
    let node = ctl
        .status_json()
        .into_iter()
        .find(|n| n["name"] == "node-1");
    assert_eq!(node.expect("node-1 still listed")["removed"], true);

    // 8. A second controller on the same state fails at once, naming the first one.
    let started = Instant::now();
    let second = ctl.run(&["serve", "--listen", "127.0.0.1:0"]);
    let e = text(&second.stderr);
    assert!(!second.status.success(), "second serve: {}", show(&second));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "second serve took {:?} to fail",
        started.elapsed()
    );
    assert!(
        e.contains("another pangaea-ctl process"),
        "second serve: {e}"
    );
    assert!(
        e.contains(&format!("PID {}", serve.pid())),
        "second serve: {e}"
    );
    assert_eq!(
        read(&ctl.state.join("serve.addr")).trim(),
        addr,
        "the refused second serve overwrote serve.addr"
    );

    // 9. SIGTERM stops the controller cleanly; the store then answers directly.
    let kill = run_bounded({
        let mut c = Command::new("kill");
        c.arg("-TERM").arg(serve.pid().to_string());
        c
    });
    assert!(kill.status.success(), "kill -TERM: {}", show(&kill));
    let status = serve.wait_exit();
    assert!(status.success(), "serve after SIGTERM: {status}");
    assert!(
        !ctl.state.join("serve.pid").exists(),
        "serve.pid left behind"
    );
    let o = ctl.run(&["status"]);
    assert!(o.status.success(), "status without a daemon: {}", show(&o));
    assert!(
        text(&o.stderr).contains("no controller is running"),
        "status without a daemon: {}",
        show(&o)
    );
    assert!(text(&o.stdout).contains("node-1"), "{}", show(&o));
    drop(agent);
}

/// `cost`: the estimate adds up, names what it priced, and output to a reader that went away
/// (`pangaea-ctl cost | head -1`) ends quietly with status 0.
#[test]
fn cost_adds_up_and_a_closed_pipe_is_no_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pangaea.yaml"),
        "provider: {type: gce, zones: [us-east1-b, us-east1-c, us-east1-d]}\n",
    )
    .unwrap();
    let ctl = || {
        let mut c = Command::new(binary("pangaea-ctl"));
        c.current_dir(dir.path());
        c
    };
    let out = ctl().args(["cost", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["region"], "us-east1");
    let sum: f64 = e["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["monthly"].as_f64().unwrap())
        .sum();
    assert!((sum - e["total"].as_f64().unwrap()).abs() < 1e-9, "{e}");
    assert!(
        e["prices"].as_str().unwrap().contains("cloud.google.com"),
        "{e}"
    );
    let table = ctl().arg("cost").output().unwrap();
    assert!(
        text(&table.stdout).contains("For comparison, GKE"),
        "{}",
        show(&table)
    );
    let out = to_closed_pipe(dir.path(), &["cost"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out.stderr), "", "nothing on stderr");
}

/// `pangaea-ctl ARGS` in `dir` with its standard output a pipe whose reader is already
/// gone (`pangaea-ctl … | head -0`): every write fails with EPIPE.
fn to_closed_pipe(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    Command::new(binary("pangaea-ctl"))
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// Output to a reader that went away ends every command quietly with status 0 (the tool
/// Pangaea replaces crashed on `env | head -1`), and the same commands into a real pipe
/// print what they should.
#[test]
fn output_to_a_closed_pipe_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pangaea.yaml"), "name: pipes\n").unwrap();
    for args in [
        &["env", "etcdctl"][..],
        &["compile", "--out", "compiled"],
        &["compile", "-i", "units/etcd.service", "--node", "node-1"],
        &["cost", "-o", "json"],
        &["status"],
        &["status", "-o", "json"],
    ] {
        let open = Command::new(binary("pangaea-ctl"))
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            open.status.success() && !open.stdout.is_empty(),
            "pangaea-ctl {}: {}",
            args.join(" "),
            show(&open)
        );
        // Nothing on stderr that the command does not say anyway (`status` warns about
        // this host either way).
        let closed = to_closed_pipe(dir.path(), args);
        let said = text(&open.stderr);
        assert!(
            closed.status.success()
                && text(&closed.stderr)
                    .lines()
                    .all(|l| said.lines().any(|s| s == l)),
            "pangaea-ctl {}: {}",
            args.join(" "),
            show(&closed)
        );
    }
}

/// `eval "$(pangaea-ctl env)"` points kubectl and etcdctl at the cluster in bash, from a
/// directory whose path needs quoting; `--unset` undoes it; a tool of another provider is
/// refused with the reason.
#[test]
fn env_is_evaluated_by_the_shell_and_undone_by_unset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("it's a $cluster");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("pangaea.yaml"), "name: envs\n").unwrap();
    let ctl = binary("pangaea-ctl");
    let script = r#"eval "$("$CTL" env --shell bash)" || exit 9
printf '%s\n' "$KUBECONFIG" "$ETCDCTL_CACERT" "$ETCDCTL_ENDPOINTS"
eval "$("$CTL" env --unset)" || exit 8
printf '[%s]\n' "${KUBECONFIG-unset}" "${ETCDCTL_KEY-unset}""#;
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(&dir)
        .env("CTL", &ctl)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    let state = dir.join(".pangaea");
    assert_eq!(
        lines[0],
        state.join("admin.kubeconfig").display().to_string()
    );
    assert!(
        lines[1].starts_with(&state.display().to_string()) && lines[1].ends_with(".crt"),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("https://10.213.0.11:2379"),
        "{lines:?}"
    );
    assert_eq!(lines[3..], ["[unset]", "[unset]"]);

    let out = run_ctl(&ctl, &dir, &["env", "gcloud"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("runs on provider local, which has no gcloud settings"),
        "{}",
        show(&out)
    );
    let fish = run_ctl(&ctl, &dir, &["env", "kubectl", "--shell", "fish"]);
    assert_eq!(
        text(&fish.stdout),
        format!(
            "set -gx KUBECONFIG '{}';\n",
            state
                .join("admin.kubeconfig")
                .display()
                .to_string()
                .replace('\'', "\\'")
        )
    );
}

/// `env` on VM clusters: gcloud's project, region and zone for a GCE cluster (also as
/// `env ssh`, what `gcloud compute ssh` needs), VAGRANT_CWD for a Vagrant one, each NFS
/// entry, all evaluated by bash (and zsh where installed) and undone by `--unset`; `env
/// docker` refused everywhere with the way to get images into the nodes.
#[test]
fn env_gives_each_providers_tool_its_settings_and_docker_the_way_instead() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = binary("pangaea-ctl");
    let cluster = |name: &str, yaml: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("pangaea.yaml"), yaml).unwrap();
        dir
    };
    let gce = cluster(
        "gce",
        "name: g\nprovider:\n  type: gce\n  project: demo-project\n  zones: [europe-west1-c, europe-west1-b]\nnfs:\n  - {server: 10.0.0.5, export: /srv/share, mount: /mnt/share}\n  - {server: files.example, export: /data, mount: /data}\n",
    );
    let vagrant = cluster("vagrant", "name: v\nprovider: {type: vagrant}\n");
    let local = cluster("local", "name: l\n");
    let script = r#"eval "$("$CTL" env all)" || exit 9
printf '%s\n' "$CLOUDSDK_CORE_PROJECT" "$CLOUDSDK_COMPUTE_REGION" "$CLOUDSDK_COMPUTE_ZONE" "$PANGAEA_NFS_SERVER:$PANGAEA_NFS_EXPORT@$PANGAEA_NFS_MOUNT" "$PANGAEA_NFS_SERVER_2:$PANGAEA_NFS_EXPORT_2"
eval "$("$CTL" env --unset)" || exit 8
printf '[%s]\n' "${CLOUDSDK_COMPUTE_ZONE-unset}" "${PANGAEA_NFS_MOUNT_2-unset}" "${KUBECONFIG-unset}""#;
    // zsh: apt-get install zsh (`.ci/run` installs it).
    pangaea_tests::which("zsh");
    for sh in ["bash", "zsh"] {
        let out = Command::new(sh)
            .args(["-c", script])
            .current_dir(&gce)
            .env("CTL", &ctl)
            .env("SHELL", format!("/bin/{sh}"))
            .env_remove("CLOUDSDK_CORE_PROJECT")
            .env_remove("CLOUDSDK_COMPUTE_ZONE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{sh}: {}", show(&out));
        assert_eq!(
            text(&out.stdout).lines().collect::<Vec<_>>(),
            [
                "demo-project",
                "europe-west1",
                "europe-west1-c",
                "10.0.0.5:/srv/share@/mnt/share",
                "files.example:/data",
                "[unset]",
                "[unset]",
                "[unset]"
            ],
            "{sh}: {}",
            show(&out)
        );
    }
    // `env ssh` is what the provider's own SSH needs.
    let ssh = run_ctl(&ctl, &gce, &["env", "ssh", "--shell", "bash"]);
    assert!(
        text(&ssh.stdout).contains("export CLOUDSDK_COMPUTE_ZONE=europe-west1-c\n"),
        "{}",
        show(&ssh)
    );
    let ssh = run_ctl(&ctl, &vagrant, &["env", "ssh", "--shell", "bash"]);
    assert_eq!(
        text(&ssh.stdout),
        format!(
            "export VAGRANT_CWD={}\n",
            vagrant.join(".pangaea/vagrant").display()
        ),
        "{}",
        show(&ssh)
    );
    let ssh = run_ctl(&ctl, &local, &["env", "ssh"]);
    assert_eq!(ssh.status.code(), Some(1), "{}", show(&ssh));
    assert!(
        text(&ssh.stderr).contains("pangaea-ctl ssh NODE"),
        "{}",
        show(&ssh)
    );
    let nfs = run_ctl(&ctl, &local, &["env", "nfs"]);
    assert!(
        text(&nfs.stderr).contains("mounts no NFS export"),
        "{}",
        show(&nfs)
    );
    for dir in [&gce, &vagrant, &local] {
        let docker = run_ctl(&ctl, dir, &["env", "docker"]);
        assert!(!docker.status.success());
        assert!(
            text(&docker.stderr).contains("run containerd, not Docker")
                && text(&docker.stderr).contains("pangaea-ctl image load ARCHIVE"),
            "{}",
            show(&docker)
        );
        assert!(text(&docker.stdout).is_empty());
    }
}

/// `completion bash` is a script bash loads, whose completions are the real commands; it
/// needs no cluster and creates nothing where it runs.
#[test]
fn completion_scripts_complete_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    // What bash does on TAB: the function `complete` registered for pangaea-ctl, called
    // with the words so far.
    let script = r#"source <("$CTL" completion bash) || exit 9
fn=$(complete -p pangaea-ctl | sed -n 's/.*-F \([^ ]*\).*/\1/p'); [ -n "$fn" ] || exit 8
COMP_WORDS=(pangaea-ctl no); COMP_CWORD=1; COMP_LINE="pangaea-ctl no"; COMP_POINT=${#COMP_LINE}
"$fn" pangaea-ctl no pangaea-ctl
printf '%s\n' "${COMPREPLY[@]}"
COMP_WORDS=(pangaea-ctl node dr); COMP_CWORD=2; COMP_LINE="pangaea-ctl node dr"; COMP_POINT=${#COMP_LINE}
"$fn" pangaea-ctl dr node
printf '%s\n' "${COMPREPLY[@]}""#;
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(dir.path())
        .env("CTL", binary("pangaea-ctl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let words: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(words, ["node", "drain"], "{}", show(&out));
    for shell in ["zsh", "fish"] {
        let out = run_ctl(&binary("pangaea-ctl"), dir.path(), &["completion", shell]);
        assert!(
            out.status.success() && text(&out.stdout).contains("drain"),
            "{shell}: {}",
            show(&out)
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

/// `kubeconfig` prints the admin kubeconfig `up` wrote, or merges it into kubectl's file
/// beside the contexts already there, which the real kubectl then reads; a file that is
/// not a kubeconfig is refused and left as it was.
#[test]
fn kubeconfig_merges_beside_other_contexts_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = binary("pangaea-ctl");
    std::fs::write(dir.path().join("pangaea.yaml"), "name: demo\n").unwrap();
    let out = run_ctl(&ctl, dir.path(), &["kubeconfig"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("no admin kubeconfig yet (`pangaea-ctl up` writes it)"),
        "{}",
        show(&out)
    );

    let admin = "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster:\n    \
        server: https://127.0.0.1:6443\n    certificate-authority-data: Q0E=\nusers:\n- name: \
        kubernetes-admin\n  user:\n    client-certificate-data: Q0VSVA==\n    \
        client-key-data: S0VZ\ncontexts:\n- name: kubernetes-admin@demo\n  context:\n    \
        cluster: demo\n    user: kubernetes-admin\ncurrent-context: kubernetes-admin@demo\n";
    // As `up` leaves it (`kubeconfig` itself creates no state directory).
    std::fs::create_dir(dir.path().join(".pangaea")).unwrap();
    std::fs::write(dir.path().join(".pangaea/admin.kubeconfig"), admin).unwrap();
    let out = run_ctl(&ctl, dir.path(), &["kubeconfig"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out.stdout), admin);

    let file = dir.path().join("kubeconfig");
    let other = "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    \
        server: https://prod.example:6443\nusers:\n- name: prod\n  user:\n    token: t\n\
        contexts:\n- name: prod\n  context:\n    cluster: prod\n    user: prod\n\
        current-context: prod\n";
    std::fs::write(&file, other).unwrap();
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &file)
            .args(args)
            .output()
            .expect("kubectl (.ci/run installs it)");
        assert!(out.status.success(), "{}", show(&out));
        text(&out.stdout).trim().to_owned()
    };
    let out = run_ctl(&ctl, dir.path(), &["kubeconfig", "--merge"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).contains("kubectl config use-context pangaea-demo"));
    assert_eq!(
        kubectl(&["config", "get-contexts", "-o", "name"]),
        "pangaea-demo\nprod"
    );
    assert_eq!(kubectl(&["config", "current-context"]), "prod");
    let out = run_ctl(&ctl, dir.path(), &["kubeconfig", "--switch"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(kubectl(&["config", "current-context"]), "pangaea-demo");
    assert_eq!(
        kubectl(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.users[0].user.client-key-data}"
        ]),
        "S0VZ"
    );
    assert!(!dir.path().join("kubeconfig.lock").exists());

    let broken = "clusters: [\n";
    std::fs::write(&file, broken).unwrap();
    let out = run_ctl(&ctl, dir.path(), &["kubeconfig", "--merge"]);
    assert!(!out.status.success(), "{}", show(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("not a kubeconfig") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), broken);
}

/// `init` starts a cluster directory that works as it is: `pangaea.yaml` loads (and is the
/// defaults), git ignores the cluster's secrets, and running it again changes nothing.
#[test]
fn init_writes_a_working_directory_and_keeps_what_exists() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("lab");
    let ctl = binary("pangaea-ctl");
    let out = run_ctl(&ctl, top.path(), &["init", "lab"]);
    assert!(out.status.success(), "{}", show(&out));
    let config = std::fs::read_to_string(dir.join("pangaea.yaml")).unwrap();
    assert!(config.contains("artifactSource: pinned"), "{config}");
    let readme = std::fs::read_to_string(dir.join("templates/README.md")).unwrap();
    assert!(readme.contains("`units/etcd.service.hbs`"), "{readme}");
    assert!(!dir.join(".pangaea").exists(), "init creates no cluster");

    // The configuration loads, as the defaults: the same estimate as no file at all.
    let cost = |d: &Path| text(&run_ctl(&ctl, d, &["cost", "-o", "json"]).stdout);
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(cost(&dir), cost(empty.path()));
    assert!(cost(&dir).contains("\"cluster\": \"pangaea\""));

    // git (the real one) ignores the keys and state, not the configuration.
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("git")
    };
    assert!(git(&["init", "-q"]).status.success());
    std::fs::create_dir_all(dir.join(".pangaea/pki")).unwrap();
    std::fs::write(dir.join(".pangaea/pki/cluster-ca.key"), "k").unwrap();
    assert!(
        git(&["check-ignore", "-q", ".pangaea/pki/cluster-ca.key"])
            .status
            .success()
    );
    assert!(
        !git(&["check-ignore", "-q", "pangaea.yaml"])
            .status
            .success()
    );

    // Again, with an edited configuration and someone's own .gitignore lines: all kept.
    std::fs::write(dir.join("pangaea.yaml"), "name: lab\n").unwrap();
    std::fs::write(dir.join(".gitignore"), "target/").unwrap();
    let out = run_ctl(&ctl, &dir, &["init"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).contains("kept"), "{}", show(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("pangaea.yaml")).unwrap(),
        "name: lab\n"
    );
    let ignore = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
    assert!(
        ignore.starts_with("target/\n") && ignore.contains("\n.pangaea/\n"),
        "{ignore}"
    );
    let out = run_ctl(&ctl, &dir, &["init"]);
    assert_eq!(
        std::fs::read_to_string(dir.join(".gitignore")).unwrap(),
        ignore
    );
    assert!(!text(&out.stdout).contains("wrote"), "{}", show(&out));
    let out = run_ctl(&ctl, &dir, &["init", "--force"]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.join("pangaea.yaml")).unwrap(),
        config
    );
}

/// The exit codes scripts rely on (docs/ARCHITECTURE.md §14): a wrong command line is 2,
/// an operation that needs the controller when none runs is 3, and `--help` lists them.
#[test]
fn exit_codes_tell_usage_from_an_unreachable_controller() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = binary("pangaea-ctl");
    let out = run_ctl(&ctl, dir.path(), &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let out = run_ctl(&ctl, dir.path(), &["status", "-o", "xml"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    // A format for the output of a --dry-run that was not asked for.
    let out = run_ctl(
        &ctl,
        dir.path(),
        &["node", "remove", "node-3", "-o", "json"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(text(&out.stderr).contains("--dry-run"), "{}", show(&out));
    std::fs::write(dir.path().join("app.tar"), b"not an archive").unwrap();
    let out = run_ctl(&ctl, dir.path(), &["image", "load", "app.tar"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(text(&out.stderr).contains("the controller is not running"));
    let out = run_ctl(&ctl, dir.path(), &["--help"]);
    let help = text(&out.stdout);
    for code in ["0  done", "3  the controller", "5  refused"] {
        assert!(help.contains(code), "{help}");
    }
}

/// Log records go to the host's log file (0600), not to the operator's screen, unless
/// `-v`; the error then says where they are. Two `artifacts fetch` from a refused source
/// at once, one with `-v`: each retries (log records) and fails.
#[test]
fn log_records_go_to_the_log_file_unless_verbose() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let closed = pangaea_tests::free_port();
    std::fs::write(
        dir.path().join("overrides.yaml"),
        format!("- name: etcd\n  url: http://127.0.0.1:{closed}/etcd.tar.gz\n"),
    )
    .unwrap();
    let fetch = |verbose: bool| {
        let mut c = Command::new(binary("pangaea-ctl"));
        c.current_dir(dir.path())
            .env(
                "PANGAEA_HOST_STATE",
                dir.path().join(if verbose { "v" } else { "host" }),
            )
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        if verbose {
            c.arg("-v")
                .arg("--state-dir")
                .arg(dir.path().join("v-state"));
        }
        c.args([
            "artifacts",
            "fetch",
            "etcd",
            "--overrides",
            "overrides.yaml",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (quiet, loud) = (fetch(false), fetch(true));
    let (quiet, loud) = (
        quiet.wait_with_output().unwrap(),
        loud.wait_with_output().unwrap(),
    );
    let err = text(&quiet.stderr);
    assert_eq!(quiet.status.code(), Some(1), "{}", show(&quiet));
    assert!(!err.contains("WARN"), "a log record on the screen:\n{err}");
    let log = dir.path().join("host/pangaea-ctl.log");
    assert!(
        err.contains(&format!("(log records: {}", log.display())),
        "{err}"
    );
    let records = std::fs::read_to_string(&log).unwrap();
    assert!(
        records.contains("WARN") && records.contains("retrying"),
        "{records}"
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the log names the cluster's nodes and paths");

    let err = text(&loud.stderr);
    assert!(
        err.contains("WARN") && err.contains("retrying"),
        "{}",
        show(&loud)
    );
    assert!(!err.contains("(log records:"), "{err}");
    assert!(!dir.path().join("v/pangaea-ctl.log").exists());
}

/// `doctor` on a host missing tools: each named with the package that brings it, exit 5
/// (docs/ARCHITECTURE.md §14), JSON that parses; `--install` asks apt-get (here a recording
/// stand-in first on PATH: the test must not install into the host) for what apt knows,
/// names what it does not, and checks again.
#[test]
fn doctor_names_what_is_missing_and_installs_what_apt_can() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // Only `ip`, `kubectl` and `sh` are on this PATH (as symlinks to the real ones).
    for tool in ["ip", "kubectl", "sh"] {
        let real = pangaea_tests::which(tool);
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    let doctor = |args: &[&str]| {
        Command::new(binary("pangaea-ctl"))
            .current_dir(dir.path())
            .env("PATH", &bin)
            .env("NO_COLOR", "1")
            .arg("doctor")
            .args(args)
            .output()
            .unwrap()
    };
    let out = doctor(&["-o", "json"]);
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let find = |checks: &[serde_json::Value], name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
            .clone()
    };
    let nspawn = find(&checks, "systemd-nspawn");
    assert_eq!(nspawn["outcome"], "missing");
    assert_eq!(nspawn["fix"], "apt-get install systemd-container");
    assert_eq!(find(&checks, "debootstrap")["outcome"], "missing");
    let ip = find(&checks, "ip");
    assert_eq!(ip["outcome"], "ok");
    assert!(ip["found"].as_str().unwrap().contains("ip"), "{ip}");
    assert_eq!(find(&checks, "jq")["outcome"], "warn");
    assert!(
        text(&out.stderr).contains("systemd-nspawn, debootstrap"),
        "{}",
        show(&out)
    );
    assert!(
        !dir.path().join(".pangaea").exists(),
        "doctor creates nothing"
    );

    // A GCE cluster needs gcloud and ssh, not debootstrap. apt (the stand-in) knows jq, not the
    // Google Cloud CLI, which comes from Google's repository.
    std::fs::write(dir.path().join("pangaea.yaml"), "provider: {type: gce}\n").unwrap();
    let script = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let log = dir.path().join("apt.log");
    script("apt-cache", "[ \"$3\" != google-cloud-cli ]");
    script(
        "apt-get",
        &format!(
            "echo \"$@\" >> {log}\nfor p in \"$@\"; do [ \"$p\" = jq ] && printf '#!/bin/sh\\necho jq-1.6\\n' > {bin}/jq && /bin/chmod +x {bin}/jq; done; exit 0",
            log = log.display(),
            bin = bin.display()
        ),
    );
    let before: Vec<serde_json::Value> =
        serde_json::from_slice(&doctor(&["-o", "json"]).stdout).unwrap();
    assert!(
        before.iter().all(|c| c["name"] != "debootstrap"),
        "{before:?}"
    );
    assert_eq!(find(&before, "gcloud")["outcome"], "missing");
    let out = doctor(&["--install"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "gcloud is still missing: {}",
        show(&out)
    );
    let asked = std::fs::read_to_string(&log).unwrap();
    // openssh-client: ssh and ssh-keygen, for the tunnels to the nodes (one package).
    assert_eq!(
        asked.trim(),
        "install -y -q --no-install-recommends etcd-client jq openssh-client"
    );
    assert!(
        text(&out.stderr).contains("google-cloud-cli: apt does not know it"),
        "{}",
        show(&out)
    );
    let table = text(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("jq-1.6")),
        "{table}"
    );
    assert!(
        table.contains("https://cloud.google.com/sdk/docs/install"),
        "{table}"
    );
}

/// `-o json` and `-o yaml` wherever output is data: the same fields, parsed by a real JSON
/// parser and by yq-free means (YAML keys as `key:` lines); never the token secrets.
#[test]
fn data_commands_speak_json_and_yaml_with_the_same_fields() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = binary("pangaea-ctl");
    let out = run_ctl(&ctl, dir.path(), &["token", "create", "--node", "node-2"]);
    assert!(out.status.success(), "{}", show(&out));
    let token = text(&out.stdout).trim().to_owned();
    let (id, secret) = token.split_once('.').unwrap();
    for (args, fields) in [
        (
            &["token", "list"][..],
            &["id", "expires", "uses_left", "node", "state"][..],
        ),
        (
            &["artifacts", "list"][..],
            &["source", "setVersion", "artifacts", "alsoInMirror"][..],
        ),
        (&["pki", "show"][..], &["name", "cert"][..]),
        (&["cost"][..], &["cluster", "lines"][..]),
    ] {
        let json = run_ctl(&ctl, dir.path(), &[args, &["-o", "json"]].concat());
        assert!(json.status.success(), "{args:?}: {}", show(&json));
        let v: serde_json::Value = serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|e| panic!("{args:?} -o json: {e}: {}", show(&json)));
        let first = v.as_array().map_or(&v, |a| &a[0]);
        let yaml = text(&run_ctl(&ctl, dir.path(), &[args, &["-o", "yaml"]].concat()).stdout);
        for f in fields {
            assert!(first.get(f).is_some(), "{args:?} -o json lacks {f}: {v}");
            assert!(
                yaml.contains(&format!("{f}:")),
                "{args:?} -o yaml lacks {f}:\n{yaml}"
            );
        }
        assert!(!text(&json.stdout).contains(secret) && !yaml.contains(secret));
    }
    let tokens = text(&run_ctl(&ctl, dir.path(), &["token", "list", "-o", "json"]).stdout);
    let tokens: serde_json::Value = serde_json::from_str(&tokens).unwrap();
    assert_eq!(tokens[0]["id"], id);
    assert_eq!(tokens[0]["node"], "node-2");
    assert_eq!(tokens[0]["state"], "valid");
}

/// Under `sudo`, the kubeconfig `kubeconfig --merge` (and `up`) writes is the invoking
/// user's: the file and the directory it had to create belong to `$SUDO_USER`, so their
/// kubectl can read it. (Run as root, as CI does; `nobody` stands for the user.)
#[test]
fn a_kubeconfig_merged_under_sudo_belongs_to_the_user() {
    use std::os::unix::fs::MetadataExt;
    let id = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        text(&id.stdout).trim(),
        "0",
        "this test needs root (CI runs as root)"
    );
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let nobody: u32 = text(&nobody.stdout)
        .trim()
        .parse()
        .expect("user nobody exists");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pangaea.yaml"), "name: demo\n").unwrap();
    std::fs::create_dir(dir.path().join(".pangaea")).unwrap();
    std::fs::write(
        dir.path().join(".pangaea/admin.kubeconfig"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster: {server: https://127.0.0.1:6443}\n\
         users:\n- name: kubernetes-admin\n  user: {token: t}\ncontexts:\n- name: a\n  context: {cluster: demo, user: kubernetes-admin}\n",
    )
    .unwrap();
    let file = dir.path().join("home/.kube/config");
    let out = Command::new(binary("pangaea-ctl"))
        .current_dir(dir.path())
        .env("SUDO_USER", "nobody")
        .args(["kubeconfig", "--merge", "--file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), nobody);
    assert_eq!(
        std::fs::metadata(file.parent().unwrap()).unwrap().uid(),
        nobody
    );
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
}
