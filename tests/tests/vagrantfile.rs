//! The Vagrant provider's `Vagrantfile`, as `pangaea-ctl compile` writes it for a cluster with
//! `provider: {type: vagrant}`, checked by the real `vagrant validate` with vagrant-libvirt
//! loaded (it checks the libvirt options' names). `validate` lets wrong value types and
//! invalid addresses through, so the values are checked too: each machine's address is its
//! node's, and a seed path holding a quote is still that path once Ruby reads it.
//!
//! Needs: apt-get install vagrant vagrant-libvirt (`.ci/run` installs them).

use pangaea_tests::{binary, output_text as text, run_ctl};
use std::path::Path;
use std::process::{Command, Output};

fn require_vagrant() {
    assert!(
        Command::new("vagrant")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "vagrant not found: apt-get install vagrant vagrant-libvirt"
    );
}

/// `vagrant validate` in `dir`, with a scratch VAGRANT_HOME and no network check.
fn validate(dir: &Path, home: &Path) -> Output {
    Command::new("vagrant")
        .arg("validate")
        .current_dir(dir)
        .env("VAGRANT_HOME", home)
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
        .output()
        .unwrap()
}

/// What Ruby reads from a literal.
fn ruby_value(literal: &str) -> String {
    let out = Command::new("ruby")
        .args(["-e", "print eval(ARGV[0])", literal])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn compile_writes_a_vagrantfile_that_vagrant_validates_with_the_nodes_values() {
    require_vagrant();
    let tmp = tempfile::tempdir().unwrap();
    // A cluster directory whose path a naive generator would break: a quote and a space.
    let dir = tmp.path().join("it's a cluster");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("pangaea.yaml"),
        "name: demo\nprovider: {type: vagrant, boxName: local/bookworm}\npools:\n  - name: node\n    count: 3\n    memoryMiB: 2048\n",
    )
    .unwrap();
    let out = run_ctl(
        &binary("pangaea-ctl"),
        &dir,
        &["compile", "--out", "compiled"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Vagrant: "),
        "the driver and why: {}",
        text(&out)
    );
    let compiled = dir.join("compiled");
    let vagrantfile = std::fs::read_to_string(compiled.join("Vagrantfile")).unwrap();
    let home = tmp.path().join("vagrant.d");
    let v = validate(&compiled, &home);
    assert!(v.status.success(), "{}\n{vagrantfile}", text(&v));

    // The values: three machines at their nodes' addresses, each with its seed, where the
    // cluster's state directory is, quote and all.
    let ips: Vec<&str> = vagrantfile
        .lines()
        .filter_map(|l| l.split_once("ip: '")?.1.split_once('\'').map(|(ip, _)| ip))
        .collect();
    assert_eq!(ips, ["10.213.0.11", "10.213.0.12", "10.213.0.13"]);
    let seeds: Vec<String> = vagrantfile
        .lines()
        .filter_map(|l| {
            l.split_once("path: ")
                .map(|(_, lit)| ruby_value(lit.trim()))
        })
        .collect();
    let state = std::fs::canonicalize(&dir)
        .unwrap()
        .join(".pangaea/vagrant/seed");
    assert_eq!(
        seeds,
        (1..=3)
            .map(|i| format!("{}/node-{i}.iso", state.display()))
            .collect::<Vec<_>>()
    );
    assert!(vagrantfile.contains("lv.memory = 2048"));

    // The same compile again changes nothing.
    let again = run_ctl(
        &binary("pangaea-ctl"),
        &dir,
        &["compile", "--out", "compiled"],
    );
    assert!(text(&again).contains("unchanged"), "{}", text(&again));
    assert!(!text(&again).contains("written "), "{}", text(&again));

    // The net catches what it should: a misspelt libvirt option fails validation.
    std::fs::write(
        compiled.join("Vagrantfile"),
        vagrantfile.replace("lv.memory", "lv.memroy"),
    )
    .unwrap();
    let v = validate(&compiled, &home);
    assert!(!v.status.success(), "{}", text(&v));
    assert!(text(&v).contains("memroy"), "{}", text(&v));
}
