//! SIGKILL at many points while an assignment is being applied: every file at its
//! destination is always a complete old or new version, never torn, and the recorded
//! applied revision always decodes.

use pangaea_tests::crash::{FILES, SIZE, content};
use prost::Message;
use std::process::Command;
use std::time::Duration;

#[test]
fn sigkill_during_apply_never_leaves_a_torn_file() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut kills = 0;
    for round in 0..40u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_apply-loop"))
            .arg(root.path())
            .arg(state.path())
            .spawn()
            .unwrap();
        // Kill points spread over the first tens of milliseconds of applying; every tenth
        // round waits for a completed apply first, so that the loop provably makes progress
        // across kills even on a machine too loaded to finish one in 60 ms.
        if round % 10 == 9 {
            let before = applied_revision(state.path());
            pangaea_tests::poll_until(
                "an apply to complete",
                Duration::from_secs(30),
                Duration::from_millis(5),
                || (applied_revision(state.path()) > before).then_some(()),
            );
        }
        std::thread::sleep(Duration::from_millis(3 + (round * 7) % 60));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        for i in 0..FILES {
            let p = root.path().join(format!("etc/crash/f{i}"));
            match std::fs::read(&p) {
                Ok(c) => assert!(
                    c == content(i, b'a') || c == content(i, b'b'),
                    "round {round}: {} is torn ({} bytes, expected {SIZE})",
                    p.display(),
                    c.len()
                ),
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "round {round}: {e}"),
            }
        }
        if let Ok(bytes) = std::fs::read(state.path().join("applied-assignment.pb")) {
            pangaea_proto::Assignment::decode(bytes.as_slice())
                .unwrap_or_else(|e| panic!("round {round}: applied state is torn: {e}"));
        }
    }
    assert_eq!(kills, 40);
    // The loop made progress across kills (it resumes from the recorded revision).
    let applied = pangaea_proto::Assignment::decode(
        std::fs::read(state.path().join("applied-assignment.pb"))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert!(
        applied.revision >= 2,
        "applied revision {}",
        applied.revision
    );
}

/// The revision the loop recorded as applied (0: none yet, or being replaced right now).
fn applied_revision(state: &std::path::Path) -> u64 {
    std::fs::read(state.join("applied-assignment.pb"))
        .ok()
        .and_then(|b| pangaea_proto::Assignment::decode(b.as_slice()).ok())
        .map_or(0, |a| a.revision)
}
