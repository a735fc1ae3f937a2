//! Hardening #8: every process that issues from the cluster's PKI (the daemon, `compile`,
//! `env`, `up`) does so under one lock, so processes racing on a fresh state directory
//! never leave a key that does not match its certificate, nor two CAs or two encryption
//! keys. Raced for real: several `pangaea-ctl` processes at once, checked with openssl.

use pangaea_tests::{binary, files_below};
use std::path::Path;
use std::process::{Command, Stdio};

fn public_key(args: &[&str], file: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .arg(file)
        .output()
        .expect("openssl not found: apt-get install openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn processes_issuing_at_once_never_mismatch_a_key_and_its_certificate() {
    for round in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let runs: Vec<Vec<String>> = (0..3)
            .flat_map(|i| {
                [
                    vec!["compile".into(), "--out".into(), format!("out-{i}")],
                    vec!["env".into(), "etcdctl".into()],
                ]
            })
            .collect();
        let children: Vec<_> = runs
            .iter()
            .map(|args| {
                Command::new(binary("pangaea-ctl"))
                    .current_dir(dir)
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (c, args) in children.into_iter().zip(&runs) {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: pangaea-ctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pki = dir.join(".pangaea/pki");
        let mut pairs = 0;
        for crt in files_below(&pki)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        {
            let key = crt.with_extension("key");
            if !key.exists() {
                continue;
            }
            assert_eq!(
                public_key(&["x509", "-noout", "-pubkey", "-in"], &crt),
                public_key(&["pkey", "-pubout", "-in"], &key),
                "round {round}: {} does not match its key",
                crt.display()
            );
            pairs += 1;
        }
        assert!(pairs > 20, "round {round}: only {pairs} certificates");
        // One encryption key: every compile rendered the same one.
        let config = |i: usize| {
            std::fs::read(dir.join(format!(
                "out-{i}/node-1/etc/kubernetes/encryption-config.yaml"
            )))
            .unwrap()
        };
        assert_eq!(config(0), config(1), "round {round}");
        assert_eq!(config(1), config(2), "round {round}");
        // And one CA: every compile's copy of it is the same.
        let ca = |i: usize| {
            std::fs::read(dir.join(format!("out-{i}/node-1/etc/kubernetes/pki/ca.crt"))).unwrap()
        };
        assert_eq!(ca(0), ca(1), "round {round}");
        assert_eq!(ca(1), ca(2), "round {round}");
    }
}
