//! The `pangaea-ctl` binary's help teaches its commands. (Also makes `cargo test
//! --workspace` build the binary, which the end-to-end CLI test in `tests/` drives.)

use std::process::Command;

fn ctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pangaea-ctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn help_lists_the_commands() {
    let (ok, text) = ctl(&["--help"]);
    assert!(ok);
    for cmd in ["serve", "pki", "token", "status", "node"] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
    }
}

#[test]
fn token_create_help_shows_defaults() {
    let (ok, text) = ctl(&["token", "create", "--help"]);
    assert!(ok);
    assert!(
        text.contains("[default: 1h]") && text.contains("--node"),
        "{text}"
    );
}

#[test]
fn an_unknown_command_fails() {
    let (ok, text) = ctl(&["frobnicate"]);
    assert!(!ok);
    assert!(text.contains("unrecognized subcommand"), "{text}");
}

#[test]
fn artifacts_import_fetch_and_list() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join(".pangaea");
    let s = state.to_str().unwrap();
    let blob = d.path().join("etcd.tar.gz");
    std::fs::write(&blob, b"pretend this is etcd").unwrap();
    let sha = {
        let out = Command::new("sha256sum").arg(&blob).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };

    let (ok, text) = ctl(&["--state-dir", s, "artifacts", "list"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("kube-apiserver") && text.contains("missing"),
        "{text}"
    );

    // A local source for the pinned etcd entry, with the digest of what it serves.
    let overrides = d.path().join("overrides.yaml");
    std::fs::write(
        &overrides,
        format!(
            "- name: etcd\n  url: file://{}\n  digest: sha256:{sha}\n  members: {{}}\n",
            blob.display()
        ),
    )
    .unwrap();
    let (ok, text) = ctl(&[
        "--state-dir",
        s,
        "artifacts",
        "fetch",
        "etcd",
        "--overrides",
        overrides.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("sha256:{sha}")), "{text}");
    assert!(state.join("artifacts/sha256").join(&sha).is_file());

    // The wrong digest for a source: refused, nothing stored.
    let wrong = "1".repeat(64);
    std::fs::write(
        &overrides,
        format!(
            "- name: runc\n  url: file://{}\n  digest: sha256:{wrong}\n",
            blob.display()
        ),
    )
    .unwrap();
    let (ok, text) = ctl(&[
        "--state-dir",
        s,
        "artifacts",
        "fetch",
        "runc",
        "--overrides",
        overrides.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("digest mismatch"), "{text}");
    assert!(!state.join("artifacts/sha256").join(&wrong).exists());

    // Unknown names and malformed overrides are clear errors.
    let (ok, text) = ctl(&["--state-dir", s, "artifacts", "fetch", "nosuch"]);
    assert!(
        !ok && text.contains("no artifact named \"nosuch\""),
        "{text}"
    );
    std::fs::write(&overrides, "- name: etcd\n  colour: blue\n").unwrap();
    let (ok, text) = ctl(&[
        "--state-dir",
        s,
        "artifacts",
        "fetch",
        "--overrides",
        overrides.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("overrides.yaml:2:"), "{text}");

    // Import: stored under both digests, listed.
    let other = d.path().join("tool");
    std::fs::write(&other, b"a tool").unwrap();
    let (ok, text) = ctl(&[
        "--state-dir",
        s,
        "artifacts",
        "import",
        other.to_str().unwrap(),
    ]);
    assert!(
        ok && text.contains("sha256:") && text.contains("sha512:"),
        "{text}"
    );
    let (ok, text) = ctl(&["--state-dir", s, "artifacts", "list"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("also in the mirror") && text.contains("tool"),
        "{text}"
    );
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn compile_writes_every_node_and_is_stable_across_runs() {
    let d = tempfile::tempdir().unwrap();
    let (state, config, out) = (
        d.path().join(".pangaea"),
        d.path().join("pangaea.yaml"),
        d.path().join("out"),
    );
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "compile",
        "--out",
        out.to_str().unwrap(),
    ];
    let (ok, first) = ctl(&args);
    assert!(ok, "{first}");
    assert!(
        first.contains("written") && first.contains("3 node(s)"),
        "{first}"
    );
    let etcd = std::fs::read_to_string(out.join("node-2/etc/systemd/system/etcd.service")).unwrap();
    assert!(
        etcd.contains("--name=node-2") && etcd.contains("--peer-client-cert-auth=true"),
        "{etcd}"
    );
    // Real certificates from the cluster's PKI, verifiable with openssl.
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(state.join("pki/etcd-ca.crt"))
        .arg(out.join("node-2/etc/etcd/pki/peer.crt"))
        .output()
        .expect("openssl not found: apt-get install openssl");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = files(&out)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    // Same input, same bytes: certificates are reused, nothing is rewritten.
    let (ok, second) = ctl(&args);
    assert!(ok, "{second}");
    assert!(second.contains(", 0 changed"), "{second}");
    let after: Vec<(std::path::PathBuf, Vec<u8>)> = files(&out)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn compile_one_template() {
    let d = tempfile::tempdir().unwrap();
    let (state, config) = (d.path().join(".pangaea"), d.path().join("pangaea.yaml"));
    let base = [
        "--state-dir",
        state.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "compile",
    ];
    let (ok, text) = ctl(&[&base[..], &["-i", "units/etcd.service", "--node", "node-3"]].concat());
    assert!(ok && text.contains("--name=node-3"), "{text}");
    let custom = d.path().join("mine.hbs");
    std::fs::write(
        &custom,
        "{{node.name}} {{cidr_host cluster.service_cidr 10}} {{etcd_endpoints nodes}}\n",
    )
    .unwrap();
    let target = d.path().join("mine.txt");
    let (ok, text) = ctl(&[
        &base[..],
        &[
            "-i",
            custom.to_str().unwrap(),
            "--out-file",
            target.to_str().unwrap(),
        ],
    ]
    .concat());
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "node-1 10.96.0.10 https://10.213.0.11:2379,https://10.213.0.12:2379,https://10.213.0.13:2379\n"
    );
    let (ok, text) = ctl(&[&base[..], &["-i", "units/nope.service"]].concat());
    assert!(!ok && text.contains("no template named"), "{text}");
}

#[test]
fn compile_refuses_bad_input_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (state, config, out) = (
        d.path().join(".pangaea"),
        d.path().join("pangaea.yaml"),
        d.path().join("out"),
    );
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "compile",
        "--out",
        out.to_str().unwrap(),
    ];
    std::fs::write(&config, "network:\n  pods: 10.96.0.0/16\n").unwrap();
    let (ok, text) = ctl(&args);
    assert!(
        !ok && text.contains("pangaea.yaml:2:") && text.contains("overlaps"),
        "{text}"
    );
    assert!(!out.exists(), "nothing may be written on bad input");
    // A template override with an error, in the cluster's templates directory.
    std::fs::write(&config, "name: demo\n").unwrap();
    std::fs::create_dir_all(d.path().join("templates/units")).unwrap();
    std::fs::write(
        d.path().join("templates/units/kubelet.service.hbs"),
        "[Service]\nExecStart={{kubelet_path}}\n",
    )
    .unwrap();
    let (ok, text) = ctl(&args);
    assert!(
        !ok && text.contains("units/kubelet.service")
            && text.contains("line 2")
            && text.contains("kubelet_path"),
        "{text}"
    );
    assert!(
        !out.exists(),
        "nothing may be written when a template fails"
    );
}

#[test]
fn compile_watch_rerenders_on_change() {
    use std::io::Read;
    let d = tempfile::tempdir().unwrap();
    let (state, config, out) = (
        d.path().join(".pangaea"),
        d.path().join("pangaea.yaml"),
        d.path().join("out"),
    );
    std::fs::write(&config, "name: one\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pangaea-ctl"))
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "compile",
            "--watch",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let kubeconfig = out.join("node-1/etc/kubernetes/admin.kubeconfig");
    let wait = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if std::fs::read_to_string(&kubeconfig).is_ok_and(|t| t.contains(needle)) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    };
    let first = wait("name: one");
    std::fs::write(&config, "name: two\n").unwrap();
    let second = first && wait("name: two");
    child.kill().unwrap();
    let _ = child.wait();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(first, "initial render missing: {err}");
    assert!(second, "no re-render after the config changed: {err}");
}
