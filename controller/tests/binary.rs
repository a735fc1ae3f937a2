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
