//! Providers (#12): a Vagrant machine that is stopped when `up` finds it stuck (its agent
//! certificate expired during a long stop) is booted, then given its recovery token through
//! `vagrant ssh`; a running one is given it at once.
//!
//! The real vagrant and virsh need VMs (tests/tests/e2e_vagrant.rs runs them); here
//! recording stand-ins of both CLIs take their place on the PATH of a child run of this
//! very test (the process environment is the only way in, and it is changed in the child
//! alone), so the order of the calls and what each is asked are checked: `virsh list` for
//! the running machines, `vagrant up NODE` for a stopped one, `vagrant ssh NODE -c 'sudo
//! install … /var/lib/pangaea/seed/recovery-token'` with the token on its standard input,
//! which the stand-in refuses for a machine that is not running, as vagrant does.

use pangaea_controller::provider::Provider;
use pangaea_controller::provider::vagrant::Vagrant;
use pangaea_controller::state_dir::StateDir;
use std::path::Path;
use std::process::Command;

/// Set in the child run: the directory of the stand-ins' files.
const CHILD: &str = "PANGAEA_VAGRANT_RECOVERY_CHILD";
const TEST: &str = "a_stopped_vagrant_machine_is_booted_then_given_its_recovery_token";

/// The stand-ins: each call is logged; `up` makes a machine running; `ssh` keeps its
/// standard input for a running machine, and fails for another.
fn write_stand_ins(dir: &Path) {
    let d = dir.display();
    let virsh = format!(
        "#!/bin/sh\necho \"virsh $*\" >> {d}/calls\ncase \"$*\" in *'list --name --state-running'*) cat {d}/running 2>/dev/null;; esac\n"
    );
    let vagrant = format!(
        "#!/bin/sh\necho \"vagrant $*\" >> {d}/calls\ncase \"$1\" in\n  up) echo \"pangaea-rec-$2\" >> {d}/running;;\n  ssh) grep -qx \"pangaea-rec-$2\" {d}/running 2>/dev/null || {{ echo \"The VM is not running\" >&2; exit 1; }}; cat > {d}/token-$2;;\nesac\n"
    );
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, text) in [("virsh", virsh), ("vagrant", vagrant)] {
        std::fs::write(bin.join(name), text).unwrap();
        std::fs::set_permissions(
            bin.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
}

#[test]
fn a_stopped_vagrant_machine_is_booted_then_given_its_recovery_token() {
    let Some(dir) = std::env::var_os(CHILD) else {
        let dir = tempfile::tempdir().unwrap();
        write_stand_ins(dir.path());
        // node-3 runs; node-2 is stopped.
        std::fs::write(dir.path().join("running"), "pangaea-rec-node-3\n").unwrap();
        let path = format!(
            "{}:{}",
            dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, dir.path())
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the child run: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        let calls: Vec<&str> = calls.lines().collect();
        let install = "sudo install -D -m 600 /dev/stdin /var/lib/pangaea/seed/recovery-token";
        assert_eq!(
            calls,
            [
                "virsh -q -c qemu:///system list --name --state-running".to_owned(),
                "vagrant up node-2".to_owned(),
                format!("vagrant ssh node-2 -c {install}"),
                "virsh -q -c qemu:///system list --name --state-running".to_owned(),
                format!("vagrant ssh node-3 -c {install}"),
            ],
            "the stopped machine booted first, the running one given it at once"
        );
        for (node, token) in [
            ("node-2", "abcdef.0123456789abcdef"),
            ("node-3", "ghijkl.0123456789abcdef"),
        ] {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(format!("token-{node}"))).unwrap(),
                token,
                "{node}'s token, whole, on the command's standard input"
            );
        }
        return;
    };
    // The child: the provider against the stand-ins on PATH.
    let dir = Path::new(&dir);
    let cluster = dir.join("cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    let loaded = pangaea_compiler::config::Loaded::parse(
        "pangaea.yaml",
        "name: rec\nprovider: {type: vagrant}\n",
        &cluster,
    )
    .unwrap();
    let state = StateDir::new(cluster.join(".pangaea"));
    let vagrant = Vagrant::new(&loaded, &state, &dir.join("images"));
    // The machines as `up` recorded them.
    for (node, ip) in [("node-2", "10.213.0.12"), ("node-3", "10.213.0.13")] {
        let record = state.vagrant().join("nodes").join(node).join("record.json");
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        std::fs::write(
            record,
            format!(
                r#"{{"instance_id": "i-{node}", "address": "{ip}", "created_at": 1, "memory_mib": 1536, "cpus": 1}}"#
            ),
        )
        .unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        vagrant
            .deliver_token(&"node-2".parse().unwrap(), "abcdef.0123456789abcdef")
            .await
            .expect("the stopped machine is booted and given the token");
        vagrant
            .deliver_token(&"node-3".parse().unwrap(), "ghijkl.0123456789abcdef")
            .await
            .expect("the running machine is given the token");
    });
}
