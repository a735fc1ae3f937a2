//! End to end on real VMs through the Vagrant provider: `pangaea-ctl up` with
//! `provider: {type: vagrant}` builds the box from Debian packages (once; cached in the image
//! cache), makes the cluster's isolated libvirt network, and has vagrant boot three
//! vagrant-libvirt VMs (software emulation here: this host's KVM cannot run a stock
//! kernel), each with the same cloud-init user-data as every provider on a NoCloud seed ISO.
//! Their agents install themselves from the controller on the host's address of that network,
//! and the nodes must form a healthy 3-member etcd cluster. Then a reboot through the
//! provider (`vagrant halt` + `vagrant up`), a shell through `vagrant ssh`, a synced folder
//! (rsync) that every node has, and `down --purge` must leave no VM, network, seed ISO or
//! box image behind, even once the synced folder's host directory is gone.
//!
//! No traffic leaves the host: each VM has one interface, on the cluster's libvirt network,
//! which has no forwarding (checked below with `virsh domiflist` and `net-dumpxml`).
//!
//! Needs root and: apt-get install vagrant vagrant-libvirt genisoimage extlinux fdisk, and
//! `-t bookworm-backports qemu-system-x86 libvirt-daemon-system libvirt-clients` (`.ci/run`
//! installs them). Where no libvirt daemon runs (no systemd as PID 1), the test starts
//! `virtlogd` and `libvirtd` itself and stops them at the end.

use pangaea_controller::status::NodeStatus;
use pangaea_tests::{binary, output_text as text, poll_until};
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn run_id() -> u32 {
    std::process::id() % 250
}

fn cluster_name() -> String {
    format!("e2ev{}", run_id())
}

fn network() -> String {
    format!("10.234.{}.0/24", run_id())
}

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap()
}

fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(
        out.status.success(),
        "virsh {}: {}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The libvirt daemons this test started (none when the host runs its own), stopped on drop.
struct Daemons(Vec<Child>);

impl Daemons {
    fn ensure() -> Daemons {
        if virsh(&["uri"]).status.success() {
            return Daemons(Vec::new());
        }
        let mut started = Vec::new();
        for daemon in ["virtlogd", "libvirtd"] {
            started.push(
                Command::new(pangaea_tests::which(daemon))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        poll_until(
            "libvirtd to answer",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || virsh(&["uri"]).status.success().then_some(()),
        );
        Daemons(started)
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
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

    fn status(&self) -> Vec<NodeStatus> {
        pangaea_tests::ctl_status(&self.ctl, self.dir.path())
    }

    fn domains(&self) -> Vec<String> {
        let prefix = format!("pangaea-{}-", cluster_name());
        virsh_ok(&["list", "--all", "--name"])
            .lines()
            .map(str::trim)
            .filter(|d| d.starts_with(&prefix))
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn seeds(&self) -> Vec<PathBuf> {
        self.images()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with("-seed.iso"))
            .collect()
    }

    /// The cluster's files in libvirt's image directory: VM disks and seed ISOs.
    fn images(&self) -> Vec<PathBuf> {
        let prefix = format!("pangaea-{}-", cluster_name());
        std::fs::read_dir("/var/lib/libvirt/images")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect()
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        let env: Vec<(String, String)> = self
            .ok(&["env", "etcdctl"])
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        Command::new("etcdctl")
            .envs(env)
            .args(["--dial-timeout=5s", "--command-timeout=10s"])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in ["host/pangaea-ctl.log", ".pangaea/serve.log"] {
                pangaea_tests::print_log_tails(&[self.dir.path().join(log)], 40);
            }
        }
        let _ = self.ctl(&["down", "--purge"]);
        // Whatever `down` left: the VMs, their disks, the network, the seeds.
        let vagrant_dir = self.dir.path().join(".pangaea/vagrant");
        if vagrant_dir.join("Vagrantfile").exists() {
            let _ = Command::new("vagrant")
                .args(["destroy", "--force"])
                .current_dir(&vagrant_dir)
                .env("VAGRANT_CHECKPOINT_DISABLE", "1")
                .output();
        }
        for d in self.domains() {
            let _ = virsh(&["destroy", &d]);
            let _ = virsh(&["undefine", &d, "--remove-all-storage"]);
        }
        let net = format!("pangaea-{}", cluster_name());
        let _ = virsh(&["net-destroy", &net]);
        let _ = virsh(&["net-undefine", &net]);
        for s in self.seeds() {
            let _ = std::fs::remove_file(s);
        }
        let _ = virsh(&["pool-refresh", "default"]);
        for image in self.images() {
            if let Some(vol) = image.file_name() {
                let _ = virsh(&["vol-delete", "--pool", "default", &vol.to_string_lossy()]);
            }
        }
        remove_box_images();
    }
}

/// vagrant-libvirt uploads each box into libvirt's `default` pool once; this test's box
/// volume goes with the test.
fn remove_box_images() {
    let out = virsh(&["vol-list", "--pool", "default"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(vol) = line.split_whitespace().next()
            && vol.starts_with("pangaea-VAGRANTSLASH-")
        {
            let _ = virsh(&["vol-delete", "--pool", "default", vol]);
        }
    }
}

fn require_vagrant_host() {
    pangaea_tests::require_node_host();
    for (tool, install) in [
        ("vagrant", "apt-get install vagrant vagrant-libvirt"),
        ("genisoimage", "apt-get install genisoimage"),
        ("extlinux", "apt-get install extlinux syslinux-common"),
        (
            "qemu-system-x86_64",
            "apt-get install -t bookworm-backports qemu-system-x86 (see .ci/run)",
        ),
        (
            "libvirtd",
            "apt-get install -t bookworm-backports libvirt-daemon-system libvirt-clients",
        ),
    ] {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = std::env::split_paths(&path).any(|d| d.join(tool).is_file());
        assert!(found, "{tool} not found: {install}");
    }
}

fn healthy(c: &Cluster) -> bool {
    let s = c.status();
    s.len() == 3 && s.iter().all(|n| n.state == "healthy")
}

#[test]
fn up_on_vagrant_vms_forms_an_etcd_cluster_that_survives_a_reboot_and_down_leaves_nothing() {
    require_vagrant_host();
    let _daemons = Daemons::ensure();
    let dir = tempfile::tempdir().unwrap();
    let shared = format!("written on the host by run {}\n", run_id());
    std::fs::create_dir(dir.path().join("shared")).unwrap();
    std::fs::write(dir.path().join("shared/hello.txt"), &shared).unwrap();
    std::fs::write(
        dir.path().join("pangaea.yaml"),
        pangaea_tests::etcd_only_config(
            &cluster_name(),
            &network(),
            "provider:\n  type: vagrant\n  syncedFolders:\n    - {host: ./shared, guest: /srv/shared}\npools:\n  - name: node\n    count: 3\n    memoryMiB: 1536\n    cpus: 1\n    roles: [control-plane, etcd, worker]\n",
        ),
    )
    .unwrap();
    let c = Cluster {
        dir,
        ctl: binary("pangaea-ctl"),
    };

    // 1. Up from nothing: box (built once), network, three VMs, a healthy etcd cluster.
    let started = Instant::now();
    let out = c.ok(&["up", "--timeout", "15m"]);
    eprintln!("up on Vagrant VMs: {:?}\n{out}", started.elapsed());
    assert!(out.contains("3 nodes healthy"), "{out}");
    assert!(
        out.contains("libvirt driver: "),
        "the driver and why: {out}"
    );
    let domains = c.domains();
    assert_eq!(domains.len(), 3, "{domains:?}");
    let members = c.etcdctl(&["member", "list", "-w", "simple"]);
    assert!(members.status.success(), "{}", text(&members));
    assert_eq!(
        String::from_utf8_lossy(&members.stdout)
            .lines()
            .filter(|l| l.contains(", started, "))
            .count(),
        3,
        "{}",
        text(&members)
    );
    let health = c.etcdctl(&["endpoint", "health", "--cluster"]);
    assert!(health.status.success(), "{}", text(&health));

    // Nothing leaves the host: one interface per VM, on the cluster's network, which
    // forwards nowhere.
    let net = format!("pangaea-{}", cluster_name());
    for d in &domains {
        let ifaces = virsh_ok(&["domiflist", d]);
        let rows: Vec<&str> = ifaces.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(rows.len(), 1, "{d}: {ifaces}");
        assert!(rows[0].contains(&net), "{d}: {ifaces}");
    }
    let xml = virsh_ok(&["net-dumpxml", &net]);
    assert!(!xml.contains("<forward"), "{xml}");

    // The seed ISOs hold bootstrap tokens: readable by root (and QEMU's user) only.
    let seeds = c.seeds();
    assert_eq!(seeds.len(), 3, "{seeds:?}");
    for s in &seeds {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{}: {mode:o}", s.display());
    }

    // 2. A shell through `vagrant ssh`, and the user-data the node was given.
    let hostname = c.ok(&["ssh", "node-1", "--", "hostname"]);
    assert_eq!(hostname.trim(), "node-1", "{hostname}");
    // Each node has SSH host keys of its own (the box carries none).
    let host_key = |node: &str| {
        c.ok(&[
            "ssh",
            node,
            "--",
            "cat",
            "/etc/ssh/ssh_host_ed25519_key.pub",
        ])
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no host key on {node}"))
    };
    assert_ne!(host_key("node-1"), host_key("node-2"));
    let user_data = c.ok(&["node", "user-data", "node-2"]);
    assert!(user_data.contains("#cloud-config"), "{user_data}");
    // The synced folder, copied in by rsync at `up`, on every node.
    for node in ["node-1", "node-2", "node-3"] {
        let got = c.ok(&["ssh", node, "--", "cat", "/srv/shared/hello.txt"]);
        assert_eq!(got.trim(), shared.trim(), "{node}");
    }

    // 3. A reboot through the provider: the node powers off and comes back healthy, with
    // the same VM.
    let before = c.status();
    let started = Instant::now();
    c.ok(&["node", "reboot", "node-2", "--timeout", "10m"]);
    eprintln!("node reboot on Vagrant: {:?}", started.elapsed());
    poll_until(
        "every node healthy after the reboot",
        Duration::from_secs(300),
        Duration::from_secs(5),
        || healthy(&c).then_some(()),
    );
    let after = c.status();
    let id = |s: &[NodeStatus], n: &str| {
        s.iter()
            .find(|x| x.name == n)
            .map(|x| x.instance_id.clone())
    };
    assert_eq!(id(&before, "node-2"), id(&after, "node-2"));
    assert_eq!(c.domains(), domains);

    // 4. Down with --purge: no VM, disk, network or seed left, although the synced
    // folder's host directory is gone by then (vagrant checks every folder it is shown).
    std::fs::remove_dir_all(c.dir.path().join("shared")).unwrap();
    let started = Instant::now();
    c.ok(&["down", "--purge"]);
    eprintln!("down --purge on Vagrant: {:?}", started.elapsed());
    assert!(c.domains().is_empty(), "{:?}", c.domains());
    assert!(
        !virsh(&["net-info", &net]).status.success(),
        "{net} is left"
    );
    assert!(c.images().is_empty(), "{:?}", c.images());
}
