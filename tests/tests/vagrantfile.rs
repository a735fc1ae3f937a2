//! The Vagrant provider's `Vagrantfile`, as `pangaea-ctl compile` writes it for a cluster with
//! `provider: {type: vagrant}`, checked by the real `vagrant validate` with vagrant-libvirt
//! loaded (it checks the libvirt options' names). `validate` lets wrong value types and
//! invalid addresses through, so the values are checked too: each machine's address is its
//! node's, and a box name holding a quote is still that name once Ruby reads it.
//!
//! Synced folders: NFS cannot run on these machines (no nfsd in the kernel), and vagrant
//! refuses an NFS folder on a host whose NFS server it cannot find. For `validate` to check
//! the rest of the file, a stand-in `modinfo` and `systemctl` in PATH answer vagrant's one
//! question "is nfsd installed" with yes; the NFS options themselves are checked as values.
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
    validate_with(dir, home, &[])
}

/// [`validate`] with `env` set too.
fn validate_with(dir: &Path, home: &Path, env: &[(&str, std::ffi::OsString)]) -> Output {
    Command::new("vagrant")
        .arg("validate")
        .envs(env.iter().map(|(k, v)| (k, v)))
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
        "name: demo\nprovider: {type: vagrant, boxName: \"local/it's\"}\npools:\n  - name: node\n    count: 3\n    memoryMiB: 2048\n",
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

    // The values: three machines at their nodes' addresses, each with its seed ISO in
    // libvirt's image directory (QEMU cannot read the private .pangaea/).
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
    assert_eq!(
        seeds,
        (1..=3)
            .map(|i| format!("/var/lib/libvirt/images/pangaea-demo-node-{i}-seed.iso"))
            .collect::<Vec<_>>()
    );
    assert!(vagrantfile.contains("lv.memory = 2048"));
    let boxes: Vec<String> = vagrantfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("config.vm.box = ").map(ruby_value))
        .collect();
    assert_eq!(boxes, ["local/it's"]);

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

/// A PATH whose first directory (under `dir`) holds stand-ins for the two commands vagrant
/// asks whether this host has an NFS server (`modinfo nfsd` without systemd,
/// `systemctl list-unit-files` with it), both answering yes.
fn path_with_nfsd_stand_in(dir: &Path) -> std::ffi::OsString {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("nfsd-stand-in");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, script) in [
        (
            "modinfo",
            "#!/bin/sh\n[ \"$1\" = nfsd ] && echo 'filename: nfsd (stand-in)'\n",
        ),
        (
            "systemctl",
            "#!/bin/sh\necho 'nfs-server.service enabled enabled'\n",
        ),
    ] {
        let p = bin.join(name);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut path = bin.into_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

#[test]
fn synced_folders_are_shared_by_every_machine_rsync_by_default_nfs_squashed_to_the_owner() {
    use std::os::unix::fs::MetadataExt as _;
    require_vagrant();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("it's live")).unwrap();
    std::fs::write(
        dir.join("pangaea.yaml"),
        "name: demo\nprovider:\n  type: vagrant\n  syncedFolders:\n    - {host: ./src, guest: /srv/src}\n    - {host: \"it's live\", guest: /srv/live, type: nfs}\n",
    )
    .unwrap();
    let out = run_ctl(
        &binary("pangaea-ctl"),
        &dir,
        &["compile", "--out", "compiled"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let compiled = dir.join("compiled");
    let vagrantfile = std::fs::read_to_string(compiled.join("Vagrantfile")).unwrap();
    let home = tmp.path().join("vagrant.d");
    let v = validate_with(
        &compiled,
        &home,
        &[("PATH", path_with_nfsd_stand_in(tmp.path()))],
    );
    assert!(v.status.success(), "{}\n{vagrantfile}", text(&v));

    // The values: each folder once, for every machine (at the top level), the host path
    // absolute (vagrant would read a relative one from .pangaea/vagrant).
    let folders: Vec<(String, String, &str)> = vagrantfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("config.vm.synced_folder "))
        .filter(|l| !l.contains("disabled: true"))
        .map(|l| {
            let (host, rest) = l.split_once("', ").unwrap();
            let (guest, options) = rest.split_once(", ").unwrap();
            (ruby_value(&format!("{host}'")), ruby_value(guest), options)
        })
        .collect();
    let meta = std::fs::metadata(dir.join("it's live")).unwrap();
    assert_eq!(
        folders,
        [
            (
                dir.join("src").display().to_string(),
                "/srv/src".to_owned(),
                "type: 'rsync'"
            ),
            (
                dir.join("it's live").display().to_string(),
                "/srv/live".to_owned(),
                &*format!(
                    "type: 'nfs', nfs_version: 4, nfs_udp: false, linux__nfs_options: ['rw', 'no_subtree_check', 'all_squash', 'anonuid={}', 'anongid={}']",
                    meta.uid(),
                    meta.gid()
                )
            ),
        ],
        "{vagrantfile}"
    );

    // A host folder that is gone: compile names it and the way out, and leaves the
    // Vagrantfile as it was.
    std::fs::remove_dir(dir.join("src")).unwrap();
    let out = run_ctl(
        &binary("pangaea-ctl"),
        &dir,
        &["compile", "--out", "compiled"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "synced folder {}: No such file or directory",
            dir.join("src").display()
        )) && text(&out).contains("remove it from provider.syncedFolders"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(compiled.join("Vagrantfile")).unwrap(),
        vagrantfile
    );
}
