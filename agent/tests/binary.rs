//! The `pangaea-agent` binary as an operator meets it: help, and clear errors for a bad
//! configuration. (Also makes `cargo test --workspace` build the binary, which the
//! end-to-end CLI test in `tests/` drives.)

use std::process::Command;

fn agent(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pangaea-agent"))
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
fn help_explains_the_config_flag() {
    let (ok, text) = agent(&["--help"]);
    assert!(ok);
    assert!(
        text.contains("--config") && text.contains("bootstrap token"),
        "{text}"
    );
}

#[test]
fn a_missing_config_names_the_file() {
    let (ok, text) = agent(&["--config", "/nonexistent/agent.yaml"]);
    assert!(!ok);
    assert!(text.contains("/nonexistent/agent.yaml"), "{text}");
}

#[test]
fn a_malformed_config_names_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("agent.yaml");
    std::fs::write(
        &p,
        "controller: [\"127.0.0.1:7443\"]\nca_pin: \"sha256:00\"\n",
    )
    .unwrap();
    let (ok, text) = agent(&["--config", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("agent.yaml:2:"), "{text}");
    assert!(text.contains("ca_pin"), "{text}");
}
