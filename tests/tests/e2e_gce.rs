//! End to end through the GCE code path: `pangaea-ctl up` with `provider: {type: gce}` talks
//! to the Compute API stand-in (tests/src/gce_api.rs, itself checked against the real gcloud
//! in tests/tests/gce_api.rs), whose instances boot for real: each insert starts a local
//! systemd-nspawn node (the local provider's machinery) that runs cloud-init with the
//! `user-data` of the instance's metadata, at the instance's internal address. So the
//! network, subnetwork, firewall rules, one instance per zone, the user-data in metadata and
//! the nodes reaching the controller at `advertiseAddress` are all exercised, and the nodes
//! must form a healthy etcd cluster. Then a reboot through the provider (instance stop and
//! start), and `down --purge` must leave nothing in the project or on the host.
//!
//! A second test leaves `advertiseAddress` out, the default for an operator behind NAT: the
//! controller listens on this host's loopback only, and its daemon keeps a reverse SSH
//! tunnel to each instance's external address (the real ssh, and the real sshd in the
//! machines), so the nodes can only have reached it through the tunnels. A killed tunnel
//! comes back and its node reports again; the tunnel's key opens no shell and no other
//! forward.
//!
//! Project and region come from gcloud's variables (`CLOUDSDK_CORE_PROJECT`,
//! `CLOUDSDK_COMPUTE_REGION`), the zones from the region, as a gcloud user would have them.
//!
//! Needs root and what tests/tests/e2e_local.rs needs (`.ci/run` installs it).

use pangaea_controller::provider::Provider;
use pangaea_controller::state_dir::StateDir;
use pangaea_controller::status::NodeStatus;
use pangaea_tests::gce_cloud::{GceCloud, REGION};
use pangaea_tests::{binary, output_text as text, poll_until};
use std::path::PathBuf;
use std::process::{Command, Output};

fn run_id() -> u32 {
    std::process::id() % 250
}

fn cluster_name() -> String {
    format!("e2eg{}", run_id())
}

fn network() -> String {
    format!("10.232.{}.0/24", run_id())
}

/// The node network of the tunnelled cluster (the tests of this file run at once).
fn tunnel_network() -> String {
    format!("10.231.{}.0/24", run_id())
}

struct Env {
    rt: tokio::runtime::Runtime,
    cloud: GceCloud,
    dir: tempfile::TempDir,
    ctl: PathBuf,
}

impl Env {
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&self.ctl)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .envs(self.cloud.ctl_env())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "pangaea-ctl {}: {}",
            args.join(" "),
            text(&out)
        );
        text(&out)
    }

    fn status(&self) -> Vec<NodeStatus> {
        let out = self.ctl(&["status", "-o", "json"]);
        assert!(out.status.success(), "status: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status -o json: {e}: {}", text(&out)))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut logs: Vec<PathBuf> = std::fs::read_dir(self.cloud.machines_dir().join("nodes"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("console.log"))
                .collect();
            logs.push(StateDir::new(self.dir.path().join(".pangaea")).serve_log());
            pangaea_tests::print_log_tails(&logs, 40);
        }
        let out = self.ctl(&["down", "--purge"]);
        if !out.status.success() {
            eprintln!("cleanup: down --purge failed: {}", text(&out));
        }
        // Whatever the stand-in still holds: its machines go, then the bridge.
        self.rt.block_on(self.cloud.remove_all());
    }
}

#[test]
fn up_with_provider_gce_reaches_a_healthy_etcd_cluster_through_the_compute_api() {
    pangaea_tests::require_node_host();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cloud = rt.block_on(GceCloud::start(&format!("gcp{}", run_id()), &network()));
    let gateway = cloud.gateway;
    let env = Env {
        rt,
        cloud,
        dir: tempfile::tempdir().unwrap(),
        ctl: binary("pangaea-ctl"),
    };

    std::fs::write(
        env.dir.path().join("pangaea.yaml"),
        pangaea_tests::etcd_only_config(
            &cluster_name(),
            &network(),
            &format!("provider:\n  type: gce\n  advertiseAddress: {gateway}\n"),
        ),
    )
    .unwrap();

    // The operator's kubectl configuration already holds another cluster's context.
    let kubeconfig = env.cloud.kubeconfig();
    std::fs::write(&kubeconfig, OTHER_KUBECONFIG).unwrap();

    // 1. Up: the estimate first, then everything through the Compute API.
    let out = env.ok(&["up", "--timeout", "240s"]);
    eprintln!("{out}");
    assert!(out.contains("3 nodes healthy"), "{out}");
    let estimate = out.find("estimated cost").expect("up prints the estimate");
    let first_create = out.find("creating").expect("up creates nodes");
    assert!(estimate < first_create, "the estimate comes first: {out}");
    // kubectl itself reads the merged file: the cluster's context is current, the other
    // one is kept as it was.
    let context = format!("pangaea-{}", cluster_name());
    assert!(out.contains(&format!("context {context} in")), "{out}");
    assert_eq!(
        kubectl(&kubeconfig, &["config", "current-context"]),
        context
    );
    let server = kubectl(
        &kubeconfig,
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    assert!(server.starts_with("https://"), "{server}");
    assert_eq!(
        kubectl(&kubeconfig, &["config", "get-contexts", "-o", "name"]),
        format!("{context}\nprod")
    );
    let net = format!("pangaea-{}", cluster_name());
    let static_ip: String;
    {
        let s = env.cloud.api.state.lock().unwrap();
        assert!(s.unserved.is_empty(), "{:?}", s.unserved);
        assert!(s.networks.contains_key(&net));
        assert_eq!(
            s.subnetworks[&(REGION.to_owned(), net.clone())]["ipCidrRange"],
            network()
        );
        assert_eq!(s.firewalls.len(), 2, "{:?}", s.firewalls.keys());
        // The API's static address, held by the API node (node-1).
        let address = &s.addresses[&(REGION.to_owned(), format!("pangaea-{}-api", cluster_name()))];
        assert_eq!(address["status"], "IN_USE");
        assert!(
            address["users"][0]
                .as_str()
                .unwrap()
                .ends_with(&format!("/instances/{}-node-1", cluster_name())),
            "{address}"
        );
        let node_1 = &s.instances[&(format!("{REGION}-a"), format!("{}-node-1", cluster_name()))];
        assert_eq!(
            node_1["networkInterfaces"][0]["accessConfigs"][0]["natIP"],
            address["address"]
        );
        static_ip = address["address"].as_str().unwrap().to_owned();
        // One instance per zone of the region (taken in order), each at its node's address,
        // with the user-data in its metadata and the cluster's label and tag.
        let placed: Vec<(String, String, String)> = s
            .instances
            .iter()
            .map(|((zone, name), i)| {
                (
                    zone.clone(),
                    name.clone(),
                    i["networkInterfaces"][0]["networkIP"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect();
        let c = cluster_name();
        let ip = |n: u8| format!("10.232.{}.{}", run_id(), 10 + n);
        assert_eq!(
            placed,
            vec![
                (format!("{REGION}-a"), format!("{c}-node-1"), ip(1)),
                (format!("{REGION}-b"), format!("{c}-node-2"), ip(2)),
                (format!("{REGION}-c"), format!("{c}-node-3"), ip(3)),
            ]
        );
        for i in s.instances.values() {
            assert_eq!(i["labels"]["pangaea-cluster"], c.as_str());
            assert_eq!(i["tags"]["items"][0], net.as_str());
            let items = i["metadata"]["items"].as_array().unwrap();
            assert!(items.iter().any(|m| m["key"] == "user-data"
                && m["value"].as_str().unwrap().starts_with("#cloud-config")));
        }
    }
    // `up` names it, and `kubeconfig --external` reaches the API there, with kubectl's
    // blessing; the recorded address is in the API server certificates (pki_openssl.rs).
    assert!(
        out.contains(&format!(
            "API at its static address: https://{static_ip}:6443"
        )),
        "{out}"
    );
    let external = env.dir.path().join("external.kubeconfig");
    let printed = env.ctl(&["kubeconfig", "--external"]);
    assert!(printed.status.success(), "{}", text(&printed));
    std::fs::write(&external, &printed.stdout).unwrap();
    assert_eq!(
        kubectl(
            &external,
            &[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}"
            ]
        ),
        format!("https://{static_ip}:6443")
    );
    let status = env.status();
    assert_eq!(status.len(), 3);
    for n in &status {
        assert_eq!(n.state, "healthy", "{}", n.name);
        assert!(
            n.timeline.created_at.is_some_and(|t| t > 1_700_000_000),
            "{}: creation time from the API: {:?}",
            n.name,
            n.timeline
        );
    }
    let members: usize = status.iter().filter(|n| n.etcd.member().is_some()).count();
    assert_eq!(members, 3, "every node an etcd member: {status:?}");

    // The user-data node-2 was given, from its instance's metadata, its token's secret
    // redacted.
    let given = {
        let s = env.cloud.api.state.lock().unwrap();
        let i = &s.instances[&(format!("{REGION}-b"), format!("{}-node-2", cluster_name()))];
        i["metadata"]["items"][0]["value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let token = given
        .lines()
        .find_map(|l| l.trim().strip_prefix("content: \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the token's line");
    let (id, secret) = token.split_once('.').unwrap();
    let shown = env.ok(&["node", "user-data", "node-2"]);
    assert!(shown.starts_with("#cloud-config"), "{shown}");
    assert!(
        shown.contains(&format!("{id}.<redacted>")) && !shown.contains(secret),
        "{shown}"
    );
    assert_eq!(shown, given.replace(secret, "<redacted>"));
    let out = env.ctl(&["node", "user-data", "node-9"]);
    assert!(!out.status.success() && text(&out).contains("node node-9 does not exist"));

    // `plan` on the cluster as `up` left it: nothing to change. With a template override
    // it shows the change as a diff on every node, and changes nothing itself.
    let plan = env.ok(&["plan"]);
    assert!(plan.contains("no changes"), "{plan}");
    let revisions =
        |env: &Env| -> Vec<u64> { env.status().iter().map(|n| n.assigned_revision).collect() };
    let before = revisions(&env);
    let builtin = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../templates/units/etcd.service.hbs"
    ))
    .unwrap();
    assert!(builtin.contains("Restart=always"));
    let over = env.dir.path().join("templates/units/etcd.service.hbs");
    std::fs::create_dir_all(over.parent().unwrap()).unwrap();
    std::fs::write(
        &over,
        builtin.replace("Restart=always", "Restart=on-failure"),
    )
    .unwrap();
    let plan = env.ok(&["plan"]);
    assert_eq!(
        plan.matches("-Restart=always\n+Restart=on-failure\n")
            .count(),
        3,
        "{plan}"
    );
    assert!(!plan.contains("PRIVATE KEY"), "{plan}");
    let json = env.ctl(&["plan", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("plan -o json");
    assert_eq!(json["nodes"].as_array().unwrap().len(), 3, "{json}");
    assert_eq!(
        json["nodes"][0]["files"][0]["path"],
        "/etc/systemd/system/etcd.service"
    );
    assert_eq!(revisions(&env), before, "plan changed an assignment");
    std::fs::remove_file(&over).unwrap();
    assert!(env.ok(&["plan"]).contains("no changes"));

    // `ssh` becomes `gcloud compute ssh` to the node's instance in its zone (a recording
    // gcloud first on PATH: no SSH server runs in the stand-in's machines).
    let fake = env.dir.path().join("fake-bin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("gcloud"), "#!/bin/sh\nprintf '%s|' \"$@\"\n").unwrap();
    std::fs::set_permissions(
        fake.join("gcloud"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&env.ctl)
        .current_dir(env.dir.path())
        .envs(env.cloud.ctl_env())
        .env("PATH", path)
        .args(["ssh", "node-2", "--", "cat", "/etc/host name"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "compute|ssh|{}-node-2|--zone=us-central1-b|--project={}|--internal-ip|--command=cat '/etc/host name'|",
            cluster_name(),
            pangaea_tests::gce_api::PROJECT
        )
    );

    // 2. A reboot through the provider: the instance is stopped and started.
    let stops = env.cloud.api.requests("POST", "node-2/stop").len();
    env.ok(&["node", "reboot", "node-2", "--timeout", "120s"]);
    assert_eq!(
        env.cloud.api.requests("POST", "node-2/stop").len(),
        stops + 1
    );
    assert_eq!(env.cloud.api.requests("POST", "node-2/start").len(), 1);
    assert!(env.status().iter().all(|n| n.state == "healthy"));

    // 3. Down --purge: nothing of the cluster left in the project, nor on the host.
    env.ok(&["down", "--purge"]);
    {
        let s = env.cloud.api.state.lock().unwrap();
        assert!(s.instances.is_empty(), "{:?}", s.instances.keys());
        assert!(s.firewalls.is_empty(), "{:?}", s.firewalls.keys());
        assert!(s.addresses.is_empty(), "{:?}", s.addresses.keys());
        assert!(s.subnetworks.is_empty() && s.networks.is_empty());
        assert!(s.unserved.is_empty(), "{:?}", s.unserved);
    }
    let left = env.rt.block_on(env.cloud.machines.list()).unwrap();
    assert!(left.is_empty(), "{left:?}");
    // Exactly the cluster's entries are gone from kubectl's file.
    assert_eq!(
        kubectl(&kubeconfig, &["config", "get-contexts", "-o", "name"]),
        "prod"
    );
    assert_eq!(
        kubectl(
            &kubeconfig,
            &["config", "view", "-o", "jsonpath={.users[*].name}"]
        ),
        "prod-admin"
    );
}

/// The PIDs of the tunnels' ssh processes of the cluster whose state is `state`, by node
/// address (read from /proc: they are the test's daemon's children).
fn tunnels(state: &StateDir) -> Vec<(u32, String)> {
    let key = state.tunnel_key().display().to_string();
    let mut out: Vec<(u32, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let argv: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (argv.first()? == "ssh" && argv.contains(&key)).then_some(())?;
            let host = argv
                .iter()
                .find_map(|a| a.strip_prefix("pangaea-tunnel@"))?;
            Some((pid, host.to_owned()))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

#[test]
fn behind_nat_the_nodes_reach_the_controller_through_ssh_tunnels_that_come_back() {
    pangaea_tests::require_node_host();
    let ssh = pangaea_tests::which("ssh");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cloud = rt.block_on(GceCloud::start(
        &format!("gct{}", run_id()),
        &tunnel_network(),
    ));
    let env = Env {
        rt,
        cloud,
        dir: tempfile::tempdir().unwrap(),
        ctl: binary("pangaea-ctl"),
    };
    let name = format!("e2et{}", run_id());
    std::fs::write(
        env.dir.path().join("pangaea.yaml"),
        // No static API address here: the stand-in's static addresses lead nowhere on this
        // host, and the tunnels dial each instance's external address (the static address
        // is the other test's).
        pangaea_tests::etcd_only_config(
            &name,
            &tunnel_network(),
            "provider:\n  type: gce\n  staticApiAddress: false\n",
        ),
    )
    .unwrap();
    let state = StateDir::new(env.dir.path().join(".pangaea"));

    let started = std::time::Instant::now();
    let out = env.ok(&["up", "--timeout", "240s"]);
    eprintln!("up through SSH tunnels: {:?}\n{out}", started.elapsed());
    assert!(out.contains("3 nodes healthy"), "{out}");
    // The controller is on this host's loopback, where no node can dial it.
    assert_eq!(
        std::fs::read_to_string(state.serve_addr()).unwrap().trim(),
        "127.0.0.1:7443"
    );
    {
        let s = env.cloud.api.state.lock().unwrap();
        let rule = &s.firewalls[&format!("pangaea-{name}-ssh")];
        assert_eq!(rule["allowed"][0]["ports"][0], "22", "{rule}");
    }
    let ip = |n: u8| format!("10.231.{}.{}", run_id(), 10 + n);
    let open = tunnels(&state);
    assert_eq!(
        open.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>(),
        [ip(1), ip(2), ip(3)],
        "{open:?}"
    );

    // A tunnel killed: the daemon opens it again, and node-2 reports through it again.
    let (old, _) = open.iter().find(|(_, h)| *h == ip(2)).unwrap().clone();
    let killed_at = pangaea_controller::records::now();
    assert!(
        Command::new("kill")
            .args(["-KILL", &old.to_string()])
            .status()
            .unwrap()
            .success()
    );
    poll_until(
        "node-2's tunnel back, and node-2 healthy with a report after the kill",
        std::time::Duration::from_secs(90),
        std::time::Duration::from_millis(500),
        || {
            let back = tunnels(&state)
                .iter()
                .any(|(pid, h)| *h == ip(2) && *pid != old);
            let node_2 = env.status().into_iter().find(|n| n.name == "node-2")?;
            (back && node_2.last_report_at > killed_at + 1 && node_2.state == "healthy")
                .then_some(())
        },
    );
    eprintln!(
        "node-2 reports again {} s after its tunnel was killed",
        pangaea_controller::records::now() - killed_at
    );

    // The tunnel's key opens no shell, and no listener but the controller's two.
    let with_key = |extra: &[&str]| {
        let mut cmd = Command::new(&ssh);
        cmd.args(["-i", state.tunnel_key().to_str().unwrap()])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "ConnectTimeout=10", "-o", "ExitOnForwardFailure=yes"])
            .args(extra)
            .arg(format!("pangaea-tunnel@{}", ip(1)));
        cmd
    };
    let shell = with_key(&[]).arg("id").output().unwrap();
    assert!(
        !shell.status.success() && !String::from_utf8_lossy(&shell.stdout).contains("uid="),
        "{}",
        text(&shell)
    );
    let listener = with_key(&["-N", "-R", "127.0.0.1:9999:127.0.0.1:22"])
        .output()
        .unwrap();
    assert!(!listener.status.success(), "{}", text(&listener));

    // Down: no tunnel left.
    env.ok(&["down", "--purge"]);
    assert!(tunnels(&state).is_empty(), "{:?}", tunnels(&state));
}

/// The operator's kubectl configuration before `up`: another cluster, current.
const OTHER_KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster:
    server: https://prod.example:6443
users:
- name: prod-admin
  user:
    token: not-a-secret
contexts:
- name: prod
  context:
    cluster: prod
    user: prod-admin
    namespace: shop
current-context: prod
";

/// The real kubectl's answer on `kubeconfig`, trimmed (no API server is asked).
fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("kubectl (.ci/run installs it)");
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
