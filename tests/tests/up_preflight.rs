//! What `up` refuses before it creates anything (operator experience issue #13):
//! - on a machine that cannot download what the nodes need, every source is asked at
//!   once and one message lists all that failed with the way forward. The sources here
//!   are the project's own loopback servers, or the pinned URLs through a proxy that
//!   refuses: no traffic leaves this machine;
//! - a second local cluster that would take the name or addresses of one already on this
//!   host (the host's cluster registry, which `pangaea-ctl clusters` lists).

use pangaea_tests::{ARTIFACTS, binary, free_port};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `pangaea-ctl up` in `dir` with `env`, as an operator's shell would run it (no NO_COLOR:
/// colours must stay off because stderr is not a terminal). Returns its output and time.
fn up(dir: &Path, env: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let out = ctl(dir, &["up"], env);
    (out, started.elapsed())
}

/// `pangaea-ctl ARGS` in `dir` with `env` added, nothing of the caller's environment
/// that points it elsewhere.
fn ctl(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary("pangaea-ctl"));
    cmd.current_dir(dir)
        .args(args)
        .env("PANGAEA_HOST_STATE", dir.join("host"))
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env_remove("NO_COLOR")
        .env_remove("PANGAEA_STATE_DIR")
        .env_remove("PANGAEA_CONFIG")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pangaea-ctl")
}

/// The exit code of a refusal (docs/ARCHITECTURE.md §14).
const REFUSED: i32 = 5;

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn up_artifact_source_records_the_line_in_pangaea_yaml_keeping_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("pangaea.yaml");
    std::fs::write(
        &yaml,
        "# my lab\nname: lab  # mine\nartifactSource: os-packages  # offline\n",
    )
    .unwrap();
    // Back to the pinned releases: recorded first, then refused (no internet here, by a
    // proxy that refuses), with nothing else created.
    let proxy = format!("http://127.0.0.1:{}", free_port());
    let out = ctl(
        dir.path(),
        &["up", "--artifact-source", "pinned"],
        &[
            ("HTTPS_PROXY", &proxy),
            ("https_proxy", &proxy),
            ("HTTP_PROXY", &proxy),
        ],
    );
    assert_eq!(out.status.code(), Some(REFUSED), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&yaml).unwrap(),
        "# my lab\nname: lab  # mine\nartifactSource: pinned  # offline\n"
    );
    assert!(!dir.path().join(".pangaea").exists());
    // A source that does not exist is a usage error, and the file is left alone.
    let out = ctl(dir.path(), &["up", "--artifact-source", "mirror"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("os-packages"),
        "the choices are named: {out:?}"
    );
    assert!(
        std::fs::read_to_string(&yaml)
            .unwrap()
            .contains("pinned  # offline")
    );
}

#[test]
fn up_without_internet_fails_at_once_with_every_missing_artifact_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Every https request goes to a proxy on a closed loopback port: refused, as on a
    // machine that reaches only its OS package mirror.
    let proxy = format!("http://127.0.0.1:{}", free_port());
    let (out, took) = up(
        dir.path(),
        &[
            ("HTTPS_PROXY", &proxy),
            ("https_proxy", &proxy),
            ("HTTP_PROXY", &proxy),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(REFUSED),
        "up must be refused:\n{stderr}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}:\n{stderr}");
    // One message: every artifact the default cluster's nodes download, each once.
    assert_eq!(stderr.matches("Error:").count(), 1, "{stderr}");
    for name in ARTIFACTS {
        let line = format!("\n  {name} ");
        assert_eq!(
            stderr.matches(&line).count(),
            1,
            "{name} listed once:\n{stderr}"
        );
    }
    // The way forward names the offline route: one flag, which records one config line.
    assert!(
        stderr.contains("pangaea-ctl up --artifact-source os-packages"),
        "{stderr}"
    );
    assert!(stderr.contains("artifactSource: os-packages"), "{stderr}");
    assert!(stderr.contains("nothing was created"), "{stderr}");
    // No log records and no colour codes: one message for a person.
    assert!(!stderr.contains('\x1b'), "colour codes in:\n{stderr:?}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // And nothing created: no .pangaea (no CA, no mirror), no network, no node.
    assert_eq!(entries(dir.path()), Vec::<String>::new());
}

/// A loopback HTTP server answering every request with 404.
fn serve_404() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        }
    });
    port
}

/// A loopback server that accepts connections and never answers (a black hole); the
/// connections stay open until the test ends.
fn serve_nothing() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

#[test]
fn each_source_is_asked_once_at_the_same_time_and_given_a_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let missing = serve_404();
    let silent = serve_nothing();
    let closed = free_port();
    std::fs::write(
        dir.path().join("pangaea.yaml"),
        format!(
            "artifacts:
  - name: etcd
    url: http://127.0.0.1:{missing}/etcd.tar.gz
  - name: containerd
    url: http://127.0.0.1:{silent}/containerd.tar.gz
  - name: runc
    url: http://127.0.0.1:{closed}/runc
  - name: kube-apiserver
    disabled: true
  - name: kube-controller-manager
    disabled: true
  - name: kube-scheduler
    disabled: true
  - name: kubelet
    disabled: true
  - name: kube-proxy
    disabled: true
  - name: kubectl
    disabled: true
  - name: cni-plugins
    disabled: true
  - name: crictl
    disabled: true
"
        ),
    )
    .unwrap();
    let (out, took) = up(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(REFUSED),
        "up must be refused:\n{stderr}"
    );
    // The silent source takes its whole probe time (8 s); the others, asked at the same
    // time, add nothing to it.
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(10),
        "took {took:?}:\n{stderr}"
    );
    assert!(stderr.contains("3 artifacts the nodes need"), "{stderr}");
    let line = |name: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with(&format!("  {name} ")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{stderr}"))
            .to_owned()
    };
    assert!(line("etcd").ends_with("HTTP status 404"), "{stderr}");
    assert!(
        line("containerd").ends_with("no answer within 8 s"),
        "{stderr}"
    );
    assert!(line("runc").contains("Connection refused"), "{stderr}");
    assert!(
        line("runc").contains(&format!("127.0.0.1:{closed}/runc")),
        "{stderr}"
    );
    // Disabled artifacts are not asked for.
    for name in ["kube-apiserver", "kubelet", "cni-plugins", "crictl"] {
        assert!(!stderr.contains(&format!("  {name} ")), "{stderr}");
    }
    // The configuration is kept as it was, and nothing else is created beside it.
    assert_eq!(entries(dir.path()), vec!["pangaea.yaml".to_owned()]);
}

#[test]
fn a_second_local_cluster_with_the_same_name_or_addresses_is_refused_before_it_creates_anything() {
    let host = tempfile::tempdir().unwrap();
    let no_artifacts = pangaea_tests::all_artifacts_disabled();
    let host_state = host.path().join("host");
    let host_state = host_state.to_str().unwrap();
    // `up` gets as far as the local provider's node image, which it cannot build in /proc:
    // by then the cluster's state exists and is recorded, and no node was created.
    let env = [
        ("PANGAEA_HOST_STATE", host_state),
        ("PANGAEA_IMAGE_CACHE", "/proc/pangaea-test-no-image-here"),
    ];
    // Names and networks of this test's own: `down --purge` deletes the local machines and
    // bridge of its cluster's name, so a default name could take a real cluster with it.
    let id = std::process::id() % 250;
    let (a_name, b_name) = (format!("pfa{id}"), format!("pfb{id}"));
    let (a_net, b_net) = (format!("10.234.{id}.0/24"), format!("10.235.{id}.0/24"));
    let a_config = format!("name: {a_name}\nnetwork:\n  nodes: {a_net}\n");
    let (a, b) = (host.path().join("a"), host.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(a.join("pangaea.yaml"), format!("{a_config}{no_artifacts}")).unwrap();
    let out = ctl(&a, &["up"], &env);
    assert!(!out.status.success());
    assert!(
        a.join(".pangaea").is_dir(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let clusters = |dir: &Path| -> Vec<serde_json::Value> {
        let out = ctl(dir, &["clusters", "-o", "json"], &env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("clusters -o json parses")
    };
    let listed = clusters(&b);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], a_name.as_str());
    assert_eq!(listed[0]["provider"], "local");
    assert_eq!(listed[0]["nodes"], 3);
    assert_eq!(listed[0]["network"], a_net.as_str());
    assert_eq!(listed[0]["state"], "stopped");
    assert_eq!(listed[0]["directory"], a.to_str().unwrap());

    // Same name: refused, naming the other cluster's directory.
    let refused = |config: &str, says: &[&str]| {
        std::fs::write(b.join("pangaea.yaml"), config).unwrap();
        let out = ctl(&b, &["up"], &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(REFUSED), "{err}");
        for s in says {
            assert!(err.contains(s), "{s:?} not in:\n{err}");
        }
        assert!(err.contains("nothing was created"), "{err}");
        assert!(!b.join(".pangaea").exists(), "{err}");
    };
    refused(
        &format!("name: {a_name}\n{no_artifacts}"),
        &[
            &format!("cluster name \"{a_name}\" is taken"),
            a.to_str().unwrap(),
        ],
    );
    // Another name on an overlapping network: refused, with a free network to take.
    refused(
        &format!("name: {b_name}\nnetwork:\n  nodes: 10.234.0.0/16\n{no_artifacts}"),
        &[&format!("overlaps {a_net}"), "nodes: 10.235.0.0/16"],
    );
    // Apart from it: accepted (and recorded).
    std::fs::write(
        b.join("pangaea.yaml"),
        format!("name: {b_name}\nnetwork:\n  nodes: {b_net}\n{no_artifacts}"),
    )
    .unwrap();
    let out = ctl(&b, &["up"], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("nothing was created") && b.join(".pangaea").is_dir(),
        "{err}"
    );
    let names: Vec<String> = clusters(&a)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, [a_name.clone(), b_name.clone()]);

    // A cluster whose state was deleted by hand is shown as gone and blocks nothing.
    std::fs::remove_dir_all(b.join(".pangaea")).unwrap();
    let gone = clusters(&a);
    let b_row = gone.iter().find(|c| c["name"] == b_name.as_str()).unwrap();
    assert_eq!(b_row["state"], "gone", "{gone:?}");
    let yaml = ctl(&a, &["clusters", "-o", "yaml"], &env);
    assert!(String::from_utf8_lossy(&yaml.stdout).starts_with(&format!("- name: {a_name}\n")));

    // Another live cluster of A's name recorded on this host (as one made before the
    // registry, or by another registry's `up`): `down --purge` in A would take its bridge,
    // so it is refused, changing nothing.
    let c = host.path().join("c");
    std::fs::create_dir_all(c.join(".pangaea")).unwrap();
    let namesake = host.path().join("host/clusters/namesake.json");
    std::fs::write(
        &namesake,
        serde_json::json!({
            "name": a_name, "provider": "local", "nodes": 3, "network": "10.237.0.0/24",
            "state_dir": c.join(".pangaea"), "config": c.join("pangaea.yaml"),
        })
        .to_string(),
    )
    .unwrap();
    let out = ctl(&a, &["down", "--purge"], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(REFUSED), "{err}");
    assert!(
        err.contains(&format!(
            "another cluster named \"{a_name}\" lives in {}",
            c.display()
        )),
        "{err}"
    );
    assert!(a.join(".pangaea").is_dir(), "nothing changed");
    std::fs::remove_file(&namesake).unwrap();

    // `down --purge` forgets the cluster.
    let out = ctl(&a, &["down", "--purge"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = clusters(&a);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["name"], b_name.as_str());
}
