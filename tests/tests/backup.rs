//! Lifecycle (disaster recovery): `pangaea-ctl backup` and `restore` of `.pangaea/`. The
//! backup is an age file that the real `age` CLI decrypts with the passphrase; restoring
//! gives back the PKI byte for byte (modes kept) and the state store's content; a wrong
//! passphrase, a damaged file, a short passphrase and an existing cluster (without
//! `--force`) are refused and change nothing.

use age::secrecy::SecretString;
use pangaea_controller::state_dir::StateDir;
use pangaea_controller::tokens::NewToken;
use pangaea_controller::{Controller, ControllerConfig};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const PASS: &str = "correct horse battery staple";

fn pass(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

/// Every file below `dir`: relative path → (content, mode).
fn files(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    pangaea_tests::files_below(dir)
        .into_iter()
        .map(|p| {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            (
                p.strip_prefix(dir).unwrap().to_owned(),
                (std::fs::read(&p).unwrap(), mode),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_the_pki_and_state_and_refuses_what_it_should() {
    pangaea_tests::init();
    assert!(
        Command::new("age").arg("--version").output().is_ok(),
        "the age CLI is not installed: apt-get install age"
    );
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path().join(".pangaea"));
    let token_id = {
        let c = Controller::open(ControllerConfig::new(state.path()), None).unwrap();
        let (_, rec) = c
            .create_token(NewToken {
                description: "kept in the backup".into(),
                ..NewToken::default()
            })
            .await
            .unwrap();
        rec.id
    };
    std::fs::create_dir_all(state.secrets()).unwrap();
    std::fs::write(state.secret("encryption-key"), "secret").unwrap();
    std::fs::set_permissions(
        state.secret("encryption-key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let pki_before = files(&state.pki());
    assert!(!pki_before.is_empty());

    let file = dir.path().join("cluster.age");
    let short = pangaea_controller::backup::backup(&state, &file, pass("short")).await;
    assert!(
        short.unwrap_err().to_string().contains("shorter than 12"),
        "a short passphrase is refused"
    );
    assert!(!file.exists());
    let summary = pangaea_controller::backup::backup(&state, &file, pass(PASS))
        .await
        .unwrap();
    assert!(summary.files >= 5, "{summary:?}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let head = std::fs::read(&file).unwrap();
    assert!(head.starts_with(b"age-encryption.org/v1\n-> scrypt "));
    // Not a single key in clear.
    assert!(!head.windows(11).any(|w| w == b"PRIVATE KEY"));

    // The real age CLI decrypts it with the passphrase (typed on its terminal).
    let out = dir.path().join("from-age.tar.gz");
    let age = Command::new("script")
        .args(["-qec"])
        .arg(format!("age -d -o {} {}", out.display(), file.display()))
        .arg("/dev/null")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{PASS}\n").as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(age.status.success(), "age -d: {age:?}");
    let listing = Command::new("tar").arg("tzf").arg(&out).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("state.redb") && listing.contains("pki/"),
        "{listing}"
    );

    // Refusals change nothing.
    let untouched = files(state.path());
    let e = pangaea_controller::backup::restore(&state, &file, pass(PASS), false).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    let e = pangaea_controller::backup::restore(&state, &file, pass("wrong passphrase!"), true)
        .unwrap_err();
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    let damaged = dir.path().join("damaged.age");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    let e = pangaea_controller::backup::restore(&state, &damaged, pass(PASS), true).unwrap_err();
    assert!(e.to_string().contains("cannot be decrypted"), "{e}");
    assert_eq!(files(state.path()), untouched);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The machine is lost: restore into a fresh directory gives the same PKI and state.
    std::fs::remove_dir_all(state.path()).unwrap();
    assert!(
        pangaea_controller::backup::restore(&state, &file, pass(PASS), false)
            .unwrap()
            .is_none()
    );
    assert_eq!(files(&state.pki()), pki_before);
    assert_eq!(
        std::fs::read_to_string(state.secret("encryption-key")).unwrap(),
        "secret"
    );
    let c = Controller::open(ControllerConfig::new(state.path()), None).unwrap();
    assert!(
        c.tokens().unwrap().iter().any(|t| t.id == token_id),
        "the state store's content is back"
    );
    drop(c);

    // Over an existing cluster with --force: the old directory is kept aside.
    let kept = pangaea_controller::backup::restore(&state, &file, pass(PASS), true)
        .unwrap()
        .expect("kept aside");
    assert!(kept.join("pki").is_dir());
    assert_eq!(files(&state.pki()), pki_before);
}
