//! Cross-checks the controller's PKI with the real `openssl` CLI: every certificate it
//! issues must chain to the right CA (and only to it), carry the usages and SANs its TLS
//! peers check, and the CA pin must be the SPKI hash openssl computes.
//!
//! The cluster certificates checked are the ones a node really gets: node-1 of the default
//! cluster compiled through the controller's PKI, as `up` and the planner do it.

use pangaea_controller::pki::{CaKind, Issued, Pki, profiles};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const NODE: &str = "node-1";
const NODE_IP: &str = "10.213.0.11";
const SERVICE_IP: &str = "10.96.0.1";
const CONTROLLER_NAMES: [&str; 2] = ["pangaea-controller.example", "192.0.2.10"];
const YEAR_SECS: u64 = 365 * 24 * 3600;

/// Runs a program with `args`; returns whether it exited 0 and its stdout followed by stderr.
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = match Command::new(program).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && program == "openssl" => {
            panic!("openssl not found: apt-get install openssl")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn openssl(args: &[&str]) -> (bool, String) {
    run("openssl", args)
}

/// Like [`openssl`], but the command must succeed; returns its output.
fn openssl_ok(args: &[&str]) -> String {
    let (ok, out) = openssl(args);
    assert!(ok, "openssl {} failed:\n{out}", args.join(" "));
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// A fresh PKI in a temporary directory, with one certificate of every profile issued and
/// written next to it as `<name>.crt` / `<name>.key`.
struct Fixture {
    _tmp: tempfile::TempDir,
    pki: Pki,
    dir: PathBuf,
    leaves: Vec<Leaf>,
}

struct Leaf {
    name: &'static str,
    ca: CaKind,
    crt: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join(".pangaea");
        let compilation = pangaea_controller::compile::Compilation::load(
            &tmp.path().join("pangaea.yaml"),
            &pangaea_controller::state_dir::StateDir::new(&state),
        )
        .expect("compile the default cluster");
        let node = compilation.compile_node(NODE).expect("compile node-1");
        let dir = state.join("pki");
        let pki = Pki::load_or_create(&dir).expect("load PKI");
        let out = tmp.path().join("leaves");
        std::fs::create_dir(&out).expect("mkdir leaves");
        let file = |path: &str| {
            node.files
                .iter()
                .find(|f| f.path == path)
                .unwrap_or_else(|| panic!("node-1 has no {path}"))
                .content
                .clone()
        };
        let mut leaves = Vec::new();
        let mut add = |name: &'static str, ca: CaKind, cert_pem: String, key_pem: String| {
            let crt = out.join(format!("{name}.crt"));
            std::fs::write(&crt, cert_pem).expect("write leaf cert");
            std::fs::write(out.join(format!("{name}.key")), key_pem).expect("write leaf key");
            leaves.push(Leaf { name, ca, crt });
        };
        // As compiled for node-1: (name, CA, certificate path without extension).
        let compiled = [
            ("etcd-server", CaKind::Etcd, "/etc/etcd/pki/server"),
            ("etcd-peer", CaKind::Etcd, "/etc/etcd/pki/peer"),
            (
                "etcd-client",
                CaKind::Etcd,
                "/etc/kubernetes/pki/apiserver-etcd-client",
            ),
            (
                "apiserver",
                CaKind::Cluster,
                "/etc/kubernetes/pki/apiserver",
            ),
            (
                "admin",
                CaKind::Cluster,
                "/etc/kubernetes/pki/clients/admin",
            ),
        ];
        for (name, ca, stem) in compiled {
            add(
                name,
                ca,
                file(&format!("{stem}.crt")),
                file(&format!("{stem}.key")),
            );
        }
        // The controller's own: its serving certificate and a node identity.
        let controller_names: Vec<String> = CONTROLLER_NAMES.map(String::from).to_vec();
        for (name, spec) in [
            (
                "controller-serving",
                profiles::controller_serving(&controller_names),
            ),
            (
                "node-identity",
                profiles::node_identity(NODE, profiles::NODE_LIFETIME),
            ),
        ] {
            let issued: Issued = pki
                .issue(CaKind::Controller, &spec)
                .unwrap_or_else(|e| panic!("issue {name}: {e}"));
            add(name, CaKind::Controller, issued.cert_pem, issued.key_pem);
        }
        Fixture {
            _tmp: tmp,
            pki,
            dir,
            leaves,
        }
    }

    fn ca_file(&self, kind: CaKind) -> PathBuf {
        self.dir.join(format!("{}.crt", kind.file_stem()))
    }

    fn leaf(&self, name: &str) -> &Leaf {
        self.leaves
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no leaf {name}"))
    }

    fn verify(&self, ca: CaKind, leaf: &Leaf, purpose: Option<&str>) -> (bool, String) {
        let ca = self.ca_file(ca);
        let mut args = vec!["verify", "-CAfile", s(&ca)];
        if let Some(p) = purpose {
            args.extend(["-purpose", p]);
        }
        args.push(s(&leaf.crt));
        openssl(&args)
    }
}

/// The entries of a certificate's subjectAltName as openssl prints them, e.g. `DNS:localhost`,
/// `IP Address:127.0.0.1`.
fn sans(crt: &Path) -> Vec<String> {
    let out = openssl_ok(&["x509", "-noout", "-ext", "subjectAltName", "-in", s(crt)]);
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.contains("Subject Alternative Name"),
        "unexpected openssl output:\n{out}"
    );
    lines
        .flat_map(|l| l.split(','))
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect()
}

fn assert_sans(crt: &Path, expected: &[&str]) {
    let got = sans(crt);
    for want in expected {
        assert!(
            got.iter().any(|g| g == want),
            "{}: SAN {want:?} missing from {got:?}",
            crt.display()
        );
    }
}

#[test]
fn leaves_verify_against_their_ca_and_no_other() {
    let f = Fixture::new();
    assert_eq!(f.leaves.len(), 7);
    for leaf in &f.leaves {
        let (ok, out) = f.verify(leaf.ca, leaf, None);
        assert!(
            ok && out.contains(": OK"),
            "{} does not verify against {:?} CA:\n{out}",
            leaf.name,
            leaf.ca
        );
        for other in CaKind::ALL.into_iter().filter(|&k| k != leaf.ca) {
            let (ok, out) = f.verify(other, leaf, None);
            assert!(
                !ok,
                "{} (issued by the {:?} CA) wrongly verifies against the {other:?} CA:\n{out}",
                leaf.name, leaf.ca
            );
        }
    }
}

#[test]
fn extended_key_usages_match_roles() {
    let f = Fixture::new();
    // (leaf, may serve TLS, may be a TLS client)
    let table = [
        ("etcd-server", true, true),
        ("etcd-peer", true, true),
        ("etcd-client", false, true),
        ("apiserver", true, false),
        ("admin", false, true),
        ("controller-serving", true, false),
        ("node-identity", false, true),
    ];
    for (name, server, client) in table {
        let leaf = f.leaf(name);
        for (purpose, want) in [("sslserver", server), ("sslclient", client)] {
            let (ok, out) = f.verify(leaf.ca, leaf, Some(purpose));
            assert_eq!(
                ok, want,
                "openssl verify -purpose {purpose} {name}: expected success={want}:\n{out}"
            );
        }
    }
}

#[test]
fn subject_alt_names_and_subjects() {
    let f = Fixture::new();
    let loopback = ["DNS:localhost", "IP Address:127.0.0.1"];
    for name in ["etcd-server", "etcd-peer"] {
        let crt = &f.leaf(name).crt;
        assert_sans(
            crt,
            &[&format!("DNS:{NODE}"), &format!("IP Address:{NODE_IP}")],
        );
        // etcd listens on the node's address and 127.0.0.1, so those are what peers check.
        assert_sans(crt, &loopback);
    }
    let api = &f.leaf("apiserver").crt;
    assert_sans(
        api,
        &[
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
            &format!("DNS:{NODE}"),
            &format!("IP Address:{SERVICE_IP}"),
            &format!("IP Address:{NODE_IP}"),
            "IP Address:127.0.0.1",
        ],
    );
    assert_sans(
        &f.leaf("controller-serving").crt,
        &[
            &format!("DNS:{}", CONTROLLER_NAMES[0]),
            &format!("IP Address:{}", CONTROLLER_NAMES[1]),
        ],
    );
    // The IP name must not also have been written as a DNS name.
    let ctl = sans(&f.leaf("controller-serving").crt);
    assert!(
        !ctl.contains(&format!("DNS:{}", CONTROLLER_NAMES[1])),
        "IP written as DNS SAN: {ctl:?}"
    );
    assert_sans(&f.leaf("node-identity").crt, &[&format!("DNS:{NODE}")]);

    // kube-apiserver maps CN to the user and O to groups; the agent's CN is the node name.
    let subject = |name: &str| {
        openssl_ok(&[
            "x509",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
            "-in",
            s(&f.leaf(name).crt),
        ])
    };
    let admin = subject("admin");
    assert!(
        admin.contains("CN=kubernetes-admin") && admin.contains("O=system:masters"),
        "admin subject: {admin}"
    );
    let node = subject("node-identity");
    assert!(
        node.contains(&format!("CN={NODE}")) && node.contains("O=pangaea:nodes"),
        "node subject: {node}"
    );
}

#[test]
fn cas_are_p256_signing_cas_valid_ten_years() {
    let f = Fixture::new();
    let nine_years = (9 * YEAR_SECS).to_string();
    let eleven_years = (11 * YEAR_SECS).to_string();
    for kind in CaKind::ALL {
        let ca = f.ca_file(kind);
        let text = openssl_ok(&["x509", "-noout", "-text", "-in", s(&ca)]);
        for want in [
            "CA:TRUE",
            "Certificate Sign",
            "id-ecPublicKey",
            "prime256v1",
            "NIST CURVE: P-256",
            "ecdsa-with-SHA256",
        ] {
            assert!(text.contains(want), "{kind:?} CA lacks {want:?}:\n{text}");
        }
        // Self-signed: verifies against itself.
        let (ok, out) = openssl(&["verify", "-CAfile", s(&ca), s(&ca)]);
        assert!(ok, "{kind:?} CA does not verify against itself:\n{out}");
        // Still valid in 9 years, expired within 11.
        let (ok, out) = openssl(&["x509", "-noout", "-checkend", &nine_years, "-in", s(&ca)]);
        assert!(ok, "{kind:?} CA expires within 9 years:\n{out}");
        let (ok, out) = openssl(&["x509", "-noout", "-checkend", &eleven_years, "-in", s(&ca)]);
        assert!(!ok, "{kind:?} CA is valid for more than 11 years:\n{out}");
    }
}

#[test]
fn key_files_are_private_parse_and_match_their_certificates() {
    let f = Fixture::new();
    // Also writes controller.{crt,key}.
    let names: Vec<String> = CONTROLLER_NAMES.map(String::from).to_vec();
    f.pki
        .controller_serving(&names)
        .expect("controller serving certificate");

    let mut keys = 0;
    for entry in std::fs::read_dir(&f.dir).expect("read pki dir") {
        let path = entry.expect("dir entry").path();
        if path.ends_with("issued") {
            continue; // leaf certificates issued for nodes; checked through the leaves
        }
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        match path.extension().and_then(|e| e.to_str()) {
            Some("key") => {
                keys += 1;
                assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
                let (ok, out) = openssl(&["pkey", "-in", s(&path), "-noout"]);
                assert!(ok, "openssl rejects {}:\n{out}", path.display());
            }
            // Public material too is owner-only: every file of the state directory is
            // (hardening #1), and so is the issuance lock (hardening #8).
            Some("crt") | Some("pub") => {
                assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display())
            }
            // The etcd CA's revocation list, and the ledger of revoked serials.
            Some("crl") => {
                assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
                let (ok, out) = openssl(&["crl", "-in", s(&path), "-noout"]);
                assert!(ok, "openssl rejects {}:\n{out}", path.display());
            }
            _ if path.file_name().is_some_and(|n| n == "revocations.json") => {
                assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display())
            }
            _ if path.file_name().is_some_and(|n| n == ".lock") => {
                assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display())
            }
            _ => panic!("unexpected file in PKI dir: {}", path.display()),
        }
    }
    assert_eq!(keys, 6, "4 CA keys, sa.key and controller.key");

    let pubkey_of_key = |key: &Path| openssl_ok(&["pkey", "-in", s(key), "-pubout"]);
    for stem in CaKind::ALL
        .map(|k| k.file_stem())
        .into_iter()
        .chain(["controller"])
    {
        let from_cert = openssl_ok(&[
            "x509",
            "-pubkey",
            "-noout",
            "-in",
            s(&f.dir.join(format!("{stem}.crt"))),
        ]);
        let from_key = pubkey_of_key(&f.dir.join(format!("{stem}.key")));
        assert!(
            from_cert.contains("BEGIN PUBLIC KEY"),
            "{stem}: {from_cert}"
        );
        assert_eq!(
            from_cert, from_key,
            "{stem}.crt does not hold the public key of {stem}.key"
        );
    }
    let sa_pub = std::fs::read_to_string(f.dir.join("sa.pub")).expect("read sa.pub");
    assert_eq!(
        pubkey_of_key(&f.dir.join("sa.key")),
        sa_pub,
        "sa.pub does not match sa.key"
    );
    assert_eq!(sa_pub, f.pki.service_account_public_pem);
    // The controller's serving certificate on disk chains to the controller CA.
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        s(&f.ca_file(CaKind::Controller)),
        "-purpose",
        "sslserver",
        s(&f.dir.join("controller.crt")),
    ]);
    assert!(ok, "controller.crt does not verify:\n{out}");
}

#[test]
fn pin_is_the_openssl_spki_sha256() {
    let f = Fixture::new();
    openssl_ok(&["version"]); // fail with the install hint rather than a shell error
    let ca = f.ca_file(CaKind::Controller);
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
        s(&ca)
    );
    let (ok, out) = run("sh", &["-c", &script]);
    assert!(ok, "pipeline failed:\n{out}");
    let hash = out.split_whitespace().next().unwrap_or_default();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a SHA-256 from the pipeline:\n{out}"
    );
    let pin = f.pki.controller_pin().to_string();
    assert_eq!(
        pin.strip_prefix("sha256:"),
        Some(hash),
        "pin {pin} is not the openssl SPKI hash {hash}"
    );
    // It pins the controller CA, not another one.
    let other = openssl_ok(&[
        "x509",
        "-in",
        s(&f.ca_file(CaKind::Cluster)),
        "-pubkey",
        "-noout",
    ]);
    assert_ne!(
        other,
        openssl_ok(&["x509", "-in", s(&ca), "-pubkey", "-noout"])
    );
}

#[test]
fn csr_signed_certificate_takes_only_the_key_from_the_request() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = tmp.path().join("agent.key");
    let csr = tmp.path().join("agent.csr");
    openssl_ok(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        s(&key),
    ]);
    // The request asks for a Kubernetes admin identity; the signer must ignore that.
    openssl_ok(&[
        "req",
        "-new",
        "-key",
        s(&key),
        "-subj",
        "/O=system:masters/CN=evil",
        "-outform",
        "DER",
        "-out",
        s(&csr),
    ]);
    let der = std::fs::read(&csr).expect("read csr");
    let issued = f
        .pki
        .sign_csr(
            CaKind::Controller,
            &der,
            &profiles::node_identity(NODE, profiles::NODE_LIFETIME),
        )
        .expect("sign CSR");
    assert!(issued.key_pem.is_empty());
    let crt = tmp.path().join("agent.crt");
    std::fs::write(&crt, &issued.cert_pem).expect("write cert");

    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        s(&f.ca_file(CaKind::Controller)),
        "-purpose",
        "sslclient",
        s(&crt),
    ]);
    assert!(ok, "CSR-signed cert does not verify:\n{out}");
    assert_eq!(
        openssl_ok(&["x509", "-pubkey", "-noout", "-in", s(&crt)]),
        openssl_ok(&["pkey", "-in", s(&key), "-pubout"]),
        "certificate is not for the CSR's key"
    );
    let subject = openssl_ok(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        s(&crt),
    ]);
    assert!(
        subject.contains(&format!("CN={NODE}"))
            && !subject.contains("system:masters")
            && !subject.contains("evil"),
        "subject taken from the CSR: {subject}"
    );
    let serial = openssl_ok(&["x509", "-noout", "-serial", "-in", s(&crt)]);
    assert_eq!(
        serial
            .trim()
            .strip_prefix("serial=")
            .map(str::to_ascii_lowercase),
        Some(issued.serial_hex.clone()),
        "serial_hex mismatch"
    );

    // A non-P-256 key is refused.
    let rsa_key = tmp.path().join("rsa.key");
    let rsa_csr = tmp.path().join("rsa.csr");
    openssl_ok(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        s(&rsa_key),
    ]);
    openssl_ok(&[
        "req",
        "-new",
        "-key",
        s(&rsa_key),
        "-subj",
        "/CN=x",
        "-outform",
        "DER",
        "-out",
        s(&rsa_csr),
    ]);
    let der = std::fs::read(&rsa_csr).expect("read rsa csr");
    assert!(
        f.pki
            .sign_csr(
                CaKind::Controller,
                &der,
                &profiles::node_identity(NODE, profiles::NODE_LIFETIME)
            )
            .is_err(),
        "RSA CSR was signed"
    );
}

/// Every file in `dir` with its contents, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .map(|p| (p.clone(), std::fs::read(&p).expect("read file")))
        .collect();
    files.sort();
    files
}

#[test]
fn pki_persists_and_refuses_a_certificate_without_its_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let first = Pki::load_or_create(&dir).expect("create PKI");
    let issued = first
        .issue(
            CaKind::Controller,
            &profiles::node_identity(NODE, profiles::NODE_LIFETIME),
        )
        .expect("issue");
    let files_before = snapshot(&dir);
    drop(first);

    let second = Pki::load_or_create(&dir).expect("reload PKI");
    for kind in CaKind::ALL {
        let ca = second.ca(kind);
        assert_eq!(
            ca.cert_pem,
            std::fs::read_to_string(dir.join(format!("{}.crt", kind.file_stem()))).unwrap(),
            "{kind:?}"
        );
    }
    let files_after = snapshot(&dir);
    assert_eq!(files_before, files_after, "reloading rewrote the PKI");
    // A certificate issued before the reload still chains to the reloaded CA (same key).
    let leaf = tmp.path().join("node-identity.crt");
    std::fs::write(&leaf, &issued.cert_pem).unwrap();
    let ca = tmp.path().join("controller-ca-reloaded.crt");
    std::fs::write(&ca, &second.ca(CaKind::Controller).cert_pem).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", s(&ca), s(&leaf)]);
    assert!(
        ok,
        "pre-reload leaf does not verify against the reloaded CA:\n{out}"
    );
    // And the reloaded CA still signs for the same chain.
    let again = second
        .issue(
            CaKind::Controller,
            &profiles::node_identity(NODE, profiles::NODE_LIFETIME),
        )
        .expect("issue after reload");
    std::fs::write(&leaf, &again.cert_pem).unwrap();
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        s(&dir.join("controller-ca.crt")),
        s(&leaf),
    ]);
    assert!(
        ok,
        "post-reload leaf does not verify against the CA on disk:\n{out}"
    );
    drop(second);

    let key = dir.join("etcd-ca.key");
    std::fs::remove_file(&key).unwrap();
    let Err(err) = Pki::load_or_create(&dir) else {
        panic!("PKI loaded although etcd-ca.key is missing")
    };
    let msg = err.to_string();
    assert!(
        msg.contains("etcd-ca.key") && msg.contains("missing"),
        "error does not name the missing key: {msg}"
    );
    assert!(
        !key.exists(),
        "load recreated the missing key next to the old certificate"
    );
}

/// Providers (#12): the API's external address, once `up` records it (GCE's static
/// address), is named by the API server certificate of every control-plane node — it may
/// move between them — and a certificate issued before it was recorded is issued again.
#[test]
fn the_recorded_external_api_address_is_in_every_api_server_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = pangaea_controller::state_dir::StateDir::new(tmp.path().join(".pangaea"));
    let config = tmp.path().join("pangaea.yaml");
    let api_cert = |node: &str| {
        let compilation = pangaea_controller::compile::Compilation::load(&config, &state)
            .expect("compile the default cluster");
        let out = compilation.compile_node(node).expect("compile");
        let pem = &out
            .files
            .iter()
            .find(|f| f.path == "/etc/kubernetes/pki/apiserver.crt")
            .expect("a control-plane node's API server certificate")
            .content;
        let crt = tmp.path().join(format!("{node}-apiserver.crt"));
        std::fs::write(&crt, pem).unwrap();
        sans(&crt)
    };
    let external = "IP Address:203.0.113.10";
    assert!(!api_cert("node-1").contains(&external.to_owned()));
    assert!(
        pangaea_controller::api_address::save(&state, Some("203.0.113.10".parse().unwrap()))
            .unwrap()
    );
    for node in ["node-1", "node-2", "node-3"] {
        let names = api_cert(node);
        assert!(names.contains(&external.to_owned()), "{node}: {names:?}");
        assert!(
            names.contains(&"IP Address:127.0.0.1".to_owned()),
            "{node}: {names:?}"
        );
    }
}
