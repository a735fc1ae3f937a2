//! The OS-package artifact source (`artifactSource: os-packages`): binaries taken from the
//! operator's installed Debian packages, for machines that reach only their package mirror
//! (behind a corporate proxy, or these build machines).
//!
//! [`PACKAGE_BINARIES`] is the one table of which package gives which binary of which
//! artifact. [`import`] reads the installed versions with `dpkg-query`, copies each binary
//! into the controller's mirror as it is (hashed while copied, read once) and records
//! versions and digests in `.pangaea/artifacts/os-packages.json`. [`apply`] then replaces
//! each imported artifact of the set by one single-file entry per binary, so a node fetches
//! the binaries its roles run and nothing is packed, compressed or unpacked on either side
//! (the set's rule, `ArtifactSet::cover`, prefers a binary's own entry). The same installed
//! files give the same digests, so nodes do not restart. Files unchanged since the record
//! (path, size, modification time) are not read again, so commands that load the cluster do
//! not re-hash a hundred megabytes each time. Artifacts no installed package provides are
//! reported unavailable and left out of nodes' assignments (their units then say "program
//! not installed").

use crate::mirror::Mirror;
use crate::state_dir::StateDir;
use pangaea_artifact::Digest;
use pangaea_compiler::artifact_set::{ArtifactEntry, ArtifactSet, ArtifactSource};
use pangaea_compiler::config::Loaded;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One binary of an artifact, as an installed package provides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackageBinary {
    /// The artifact of the set (`etcd`, `containerd`, …).
    pub artifact: &'static str,
    /// The artifact's member name for it (the name the node plan asks for).
    pub member: &'static str,
    /// The Debian package that installs it.
    pub package: &'static str,
    /// Where the package installs it.
    pub path: &'static str,
}

const fn row(
    artifact: &'static str,
    member: &'static str,
    package: &'static str,
    path: &'static str,
) -> PackageBinary {
    PackageBinary {
        artifact,
        member,
        package,
        path,
    }
}

/// Which installed package gives which binary of which artifact (Debian 12 paths). An
/// artifact of the set with no row here has no package (the Kubernetes binaries, `crictl`).
pub const PACKAGE_BINARIES: &[PackageBinary] = &[
    row("etcd", "etcd", "etcd-server", "/usr/bin/etcd"),
    row("etcd", "etcdctl", "etcd-client", "/usr/bin/etcdctl"),
    row(
        "containerd",
        "containerd",
        "containerd",
        "/usr/bin/containerd",
    ),
    row(
        "containerd",
        "containerd-shim-runc-v2",
        "containerd",
        "/usr/bin/containerd-shim-runc-v2",
    ),
    row("containerd", "ctr", "containerd", "/usr/bin/ctr"),
    row("runc", "runc", "runc", "/usr/sbin/runc"),
    row(
        "cni-plugins",
        "bridge",
        "containernetworking-plugins",
        "/usr/lib/cni/bridge",
    ),
    row(
        "cni-plugins",
        "host-local",
        "containernetworking-plugins",
        "/usr/lib/cni/host-local",
    ),
    row(
        "cni-plugins",
        "loopback",
        "containernetworking-plugins",
        "/usr/lib/cni/loopback",
    ),
    row(
        "cni-plugins",
        "portmap",
        "containernetworking-plugins",
        "/usr/lib/cni/portmap",
    ),
];

/// Why the installed packages could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum OsPackagesError {
    /// `dpkg-query` is not there or failed.
    #[error(
        "artifactSource: os-packages reads installed packages with dpkg-query, which failed ({0}); it needs a Debian or Ubuntu host"
    )]
    Dpkg(String),
    /// A binary or the mirror could not be read or written.
    #[error("os-packages: {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OsPackagesError {
    let path = path.to_owned();
    move |source| OsPackagesError::Io {
        action,
        path,
        source,
    }
}

/// Installed package versions, by package name.
pub trait PackageQuery {
    /// The installed version of each of `packages` that is installed.
    fn installed(&self, packages: &[&str]) -> Result<BTreeMap<String, String>, OsPackagesError>;
}

/// The real query: `dpkg-query -W`.
pub struct Dpkg;

impl PackageQuery for Dpkg {
    fn installed(&self, packages: &[&str]) -> Result<BTreeMap<String, String>, OsPackagesError> {
        // Exits 1 when some package is unknown, and still prints the others.
        let out = std::process::Command::new("dpkg-query")
            .args(["-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"])
            .args(packages)
            .output()
            .map_err(|e| OsPackagesError::Dpkg(e.to_string()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && out.stdout.is_empty() && !stderr.contains("no packages found") {
            return Err(OsPackagesError::Dpkg(stderr.trim().to_owned()));
        }
        Ok(parse_dpkg(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// Installed packages from `dpkg-query -W -f '${Package}\t${Version}\t${db:Status-Abbrev}\n'`
/// (`ii ` is installed; removed packages with config files left are not).
fn parse_dpkg(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (p, v, s) = (f.next()?, f.next()?, f.next()?);
            s.starts_with("ii").then(|| (p.to_owned(), v.to_owned()))
        })
        .collect()
}

/// A binary as imported: enough to notice it changed without reading it again.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportedFile {
    /// The binary's name (the artifact member it stands for, and its entry's name).
    pub member: String,
    /// Where it was read on this host.
    pub path: String,
    /// Its digest (`sha256:…`), under which the mirror holds it.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

/// One artifact imported from packages: its binaries, each its own download.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Imported {
    /// The artifact of the set.
    pub artifact: String,
    /// The packages it came from, with their installed versions.
    pub packages: BTreeMap<String, String>,
    /// The binaries in it.
    pub files: Vec<ImportedFile>,
    /// Members of the pinned artifact that no installed package provides, with why.
    pub missing: Vec<String>,
}

impl Imported {
    /// The version shown for the artifact: its first package's.
    pub fn version(&self) -> String {
        let first = PACKAGE_BINARIES
            .iter()
            .find(|r| r.artifact == self.artifact && self.packages.contains_key(r.package))
            .map(|r| r.package);
        first
            .and_then(|p| self.packages.get(p))
            .cloned()
            .unwrap_or_default()
    }
}

/// Why an artifact with no row in [`PACKAGE_BINARIES`] is left out.
pub const NO_PACKAGE: &str = "in no OS package";

/// What an import found for a set.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Import {
    /// Artifacts imported, by name.
    pub imported: Vec<Imported>,
    /// Artifacts left out, with why ([`NO_PACKAGE`], `apt-get install X`).
    pub unavailable: Vec<(String, String)>,
}

impl Import {
    /// One line per imported artifact, and one per reason for those left out (the six
    /// Kubernetes binaries share one), for the operator.
    pub fn report(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .imported
            .iter()
            .map(|i| {
                let pkgs: Vec<String> =
                    i.packages.iter().map(|(p, v)| format!("{p} {v}")).collect();
                let bins: Vec<&str> = i.files.iter().map(|f| f.member.as_str()).collect();
                let mut line = format!(
                    "artifact {}: from OS packages {} ({})",
                    i.artifact,
                    pkgs.join(", "),
                    bins.join(", ")
                );
                if !i.missing.is_empty() {
                    line.push_str(&format!("; without {}", i.missing.join(", ")));
                }
                line
            })
            .collect();
        let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
        for (a, why) in &self.unavailable {
            match reasons.iter_mut().find(|(w, _)| w == why) {
                Some((_, names)) => names.push(a),
                None => reasons.push((why, vec![a])),
            }
        }
        out.extend(reasons.into_iter().map(|(why, names)| {
            let noun = if names.len() == 1 {
                "artifact"
            } else {
                "artifacts"
            };
            format!(
                "{noun} {}: unavailable ({why}); left out of the nodes",
                names.join(", ")
            )
        }));
        out
    }
}

/// Imports the binaries of the installed packages for every artifact of `set` except those
/// named in `keep` (configured explicitly), through `query`, reading files below `root`
/// (`/` on a real host), into `mirror`, with the record at `record`.
pub fn import(
    set: &ArtifactSet,
    keep: &[String],
    query: &dyn PackageQuery,
    root: &Path,
    mirror: &Mirror,
    record: &Path,
) -> Result<Import, OsPackagesError> {
    let previous: Import = std::fs::read(record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let known: BTreeMap<(&str, &str), &ImportedFile> = previous
        .imported
        .iter()
        .flat_map(|i| {
            i.files
                .iter()
                .map(|f| ((f.member.as_str(), f.path.as_str()), f))
        })
        .collect();
    let wanted: Vec<_> = set
        .artifacts
        .iter()
        .filter(|a| !keep.contains(&a.name))
        .collect();
    let mut packages: Vec<&str> = PACKAGE_BINARIES
        .iter()
        .filter(|r| wanted.iter().any(|a| a.name == r.artifact))
        .map(|r| r.package)
        .collect();
    packages.sort();
    packages.dedup();
    let installed = if packages.is_empty() {
        BTreeMap::new()
    } else {
        query.installed(&packages)?
    };
    let mut out = Import::default();
    for a in wanted {
        let rows: Vec<&PackageBinary> = PACKAGE_BINARIES
            .iter()
            .filter(|r| r.artifact == a.name && !keep.iter().any(|k| k == r.member))
            .collect();
        if rows.is_empty() {
            out.unavailable.push((a.name.clone(), NO_PACKAGE.into()));
            continue;
        }
        let mut files = Vec::new();
        let mut missing = Vec::new();
        let mut versions = BTreeMap::new();
        for r in &rows {
            let path = root.join(r.path.trim_start_matches('/'));
            let meta = match (installed.get(r.package), std::fs::metadata(&path)) {
                (Some(_), Ok(m)) if m.is_file() => m,
                (Some(v), _) => {
                    missing.push(format!(
                        "{} ({} {v} is installed but has no {})",
                        r.member, r.package, r.path
                    ));
                    continue;
                }
                (None, _) => {
                    missing.push(format!("{} (apt-get install {})", r.member, r.package));
                    continue;
                }
            };
            versions.insert(r.package.to_owned(), installed[r.package].clone());
            let shown = path.display().to_string();
            let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            let unchanged = known.get(&(r.member, shown.as_str())).filter(|f| {
                f.size == meta.len()
                    && f.mtime_ns == mtime_ns
                    && Digest::parse(&f.sha256).is_ok_and(|d| mirror.has(&d))
            });
            let file = match unchanged {
                Some(f) => (*f).clone(),
                None => {
                    let source = format!("os-packages: {} {}", r.package, installed[r.package]);
                    let entry = mirror.add_file_as(&path, &source, u64::MAX).map_err(|e| {
                        OsPackagesError::Io {
                            action: "import",
                            path: path.clone(),
                            source: std::io::Error::other(e.to_string()),
                        }
                    })?;
                    ImportedFile {
                        member: r.member.to_owned(),
                        path: shown,
                        sha256: entry.digest,
                        size: meta.len(),
                        mtime_ns,
                    }
                }
            };
            files.push(file);
        }
        if files.is_empty() {
            out.unavailable.push((a.name.clone(), missing.join(", ")));
            continue;
        }
        out.imported.push(Imported {
            artifact: a.name.clone(),
            packages: versions,
            files,
            missing,
        });
    }
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    pangaea_core::fsutil::atomic_write(
        record,
        &serde_json::to_vec_pretty(&out).expect("json"),
        0o600,
    )
    .map_err(|e| OsPackagesError::Io {
        action: "write",
        path: record.to_owned(),
        source: e.source,
    })?;
    Ok(out)
}

/// The artifact set a cluster's nodes install, as `loaded` configures it: the pinned set
/// with the configuration's overrides, or — with `artifactSource: os-packages` — the
/// installed packages' binaries imported into the mirror of `state` (and what was imported
/// and what is unavailable). Entries named in `artifacts:` stay as configured there.
pub fn resolve(
    loaded: &Loaded,
    state: &StateDir,
) -> Result<(ArtifactSet, Option<Import>), OsPackagesError> {
    let mut set = loaded.artifact_set();
    match loaded.config.artifact_source {
        ArtifactSource::Pinned => Ok((set, None)),
        ArtifactSource::OsPackages => {
            let keep: Vec<String> = loaded
                .config
                .artifacts
                .iter()
                .map(|o| o.name.clone())
                .collect();
            let mirror = Mirror::new(&state.artifacts());
            let record = state.artifacts().join("os-packages.json");
            let import = import(&set, &keep, &Dpkg, Path::new("/"), &mirror, &record)?;
            apply(&mut set, &import, &mirror);
            Ok((set, Some(import)))
        }
    }
}

/// The set nodes install with `import` applied: each imported artifact is replaced, where
/// it stood, by one single-file entry per binary (named after the binary, pointing to the
/// mirror, with the packages' version); unavailable ones are disabled.
pub fn apply(set: &mut ArtifactSet, import: &Import, mirror: &Mirror) {
    let mut out = Vec::with_capacity(set.artifacts.len());
    for a in std::mem::take(&mut set.artifacts) {
        if let Some(i) = import.imported.iter().find(|i| i.artifact == a.name) {
            out.extend(i.files.iter().map(|f| {
                let d = Digest::parse(&f.sha256).expect("recorded digests parse");
                ArtifactEntry {
                    name: f.member.clone(),
                    version: i.version(),
                    url: format!("file://{}", mirror.blob_path(&d).display()),
                    digest: f.sha256.clone(),
                    members: BTreeMap::new(),
                    disabled: false,
                }
            }));
        } else {
            let disabled = a.disabled || import.unavailable.iter().any(|(n, _)| n == &a.name);
            out.push(ArtifactEntry { disabled, ..a });
        }
    }
    set.artifacts = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(BTreeMap<String, String>);

    impl PackageQuery for Fake {
        fn installed(&self, p: &[&str]) -> Result<BTreeMap<String, String>, OsPackagesError> {
            Ok(self
                .0
                .iter()
                .filter(|(k, _)| p.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
    }

    fn host(root: &Path, files: &[&str]) {
        for f in files {
            let p = root.join(f.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("binary {f}")).unwrap();
        }
    }

    #[test]
    fn one_row_per_binary_and_every_artifact_member_known_to_the_set() {
        let set = ArtifactSet::defaults();
        for r in PACKAGE_BINARIES {
            let a = set
                .get(r.artifact)
                .expect("a table row names an artifact of the set");
            assert!(
                a.members.is_empty() || a.members.contains_key(r.member),
                "{r:?}: not a member of the pinned {}",
                a.name
            );
            assert_eq!(
                PACKAGE_BINARIES
                    .iter()
                    .filter(|o| o.artifact == r.artifact && o.member == r.member)
                    .count(),
                1
            );
        }
    }

    #[test]
    fn parses_installed_only() {
        let m = parse_dpkg("etcd-server\t3.4.23-4+b4\tii \nrunc\t1.1\trc \n");
        assert_eq!(m.len(), 1);
        assert_eq!(m["etcd-server"], "3.4.23-4+b4");
    }

    /// The default set's Kubernetes binaries, in its order: no OS package has them.
    const KUBERNETES: [&str; 6] = [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "kubectl",
    ];

    #[test]
    fn imports_one_entry_per_binary_reports_the_rest_and_is_deterministic() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        host(
            &root,
            &[
                "/usr/bin/etcd",
                "/usr/bin/containerd",
                "/usr/bin/containerd-shim-runc-v2",
                "/usr/bin/ctr",
                "/usr/sbin/runc",
            ],
        );
        let query = Fake(BTreeMap::from([
            ("etcd-server".into(), "3.4.23-4+b4".into()),
            ("containerd".into(), "1.6.20~ds1-1".into()),
            ("runc".into(), "1.1.5".into()),
            // installed, but its files are not where the table says
            ("containernetworking-plugins".into(), "1.1.1".into()),
        ]));
        let mirror = Mirror::new(&d.path().join("artifacts"));
        let record = d.path().join("artifacts/os-packages.json");
        let mut set = ArtifactSet::defaults();
        let keep = vec!["crictl".to_owned()];
        let imp = import(&set, &keep, &query, &root, &mirror, &record).unwrap();

        let names: Vec<&str> = imp.imported.iter().map(|i| i.artifact.as_str()).collect();
        assert_eq!(names, ["etcd", "containerd", "runc"]);
        let etcd = &imp.imported[0];
        assert_eq!(etcd.version(), "3.4.23-4+b4");
        assert_eq!(etcd.missing, ["etcdctl (apt-get install etcd-client)"]);
        let unavailable: Vec<&str> = imp.unavailable.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            unavailable,
            [KUBERNETES.as_slice(), &["cni-plugins"]].concat(),
            "crictl is kept as configured"
        );
        assert!(imp.unavailable[6].1.contains("has no /usr/lib/cni/bridge"));
        let report = imp.report().join("\n");
        for line in [
            "artifacts kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl: unavailable (in no OS package); left out of the nodes",
            "artifact cni-plugins: unavailable (",
            "artifact containerd: from OS packages containerd 1.6.20~ds1-1 (containerd, containerd-shim-runc-v2, ctr)",
        ] {
            assert!(report.contains(line), "{line:?} not in {report}");
        }

        // Every binary is in the mirror as it is, under its own digest.
        for i in &imp.imported {
            for f in &i.files {
                let blob = mirror.blob_path(&Digest::parse(&f.sha256).unwrap());
                assert_eq!(
                    std::fs::read(blob).unwrap(),
                    std::fs::read(&f.path).unwrap(),
                    "{}",
                    f.member
                );
            }
        }

        // Applied: each imported artifact becomes one single-file entry per binary, in its
        // place; unavailable artifacts are disabled; a kept one stays as configured.
        apply(&mut set, &imp, &mirror);
        let order: Vec<&str> = set.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            order,
            [
                KUBERNETES.as_slice(),
                &[
                    "etcd",
                    "containerd",
                    "containerd-shim-runc-v2",
                    "ctr",
                    "runc",
                    "cni-plugins",
                    "crictl",
                ],
            ]
            .concat()
        );
        let c = set.get("containerd").unwrap();
        assert_eq!((c.version.as_str(), c.disabled), ("1.6.20~ds1-1", false));
        assert!(
            c.members.is_empty() && c.url.starts_with("file://"),
            "{c:?}"
        );
        assert!(set.get("kube-apiserver").unwrap().disabled);
        assert!(set.get("cni-plugins").unwrap().disabled);
        assert!(!set.get("crictl").unwrap().disabled);
        let picked: Vec<&str> = set
            .cover(&["containerd", "ctr", "etcd", "etcdctl"])
            .iter()
            .map(|(a, _)| a.name.as_str())
            .collect();
        assert_eq!(
            picked,
            ["etcd", "containerd", "ctr"],
            "each binary its own download; etcdctl has none"
        );

        // Again, with the record: the same digests, nothing re-read (a file unreadable
        // now is not noticed). Then without the record: byte-identical digests.
        let again = import(
            &ArtifactSet::defaults(),
            &keep,
            &query,
            &root,
            &mirror,
            &record,
        )
        .unwrap();
        assert_eq!(again, imp);
        std::fs::remove_file(&record).unwrap();
        let rebuilt = import(
            &ArtifactSet::defaults(),
            &keep,
            &query,
            &root,
            &mirror,
            &record,
        )
        .unwrap();
        assert_eq!(rebuilt, imp);

        // A changed binary is imported anew.
        std::fs::write(root.join("usr/sbin/runc"), "binary runc, upgraded").unwrap();
        let changed = import(
            &ArtifactSet::defaults(),
            &keep,
            &query,
            &root,
            &mirror,
            &record,
        )
        .unwrap();
        assert_ne!(
            changed.imported[2].files[0].sha256,
            imp.imported[2].files[0].sha256
        );
        assert_eq!(
            std::fs::read(
                mirror.blob_path(&Digest::parse(&changed.imported[2].files[0].sha256).unwrap())
            )
            .unwrap(),
            b"binary runc, upgraded"
        );
    }

    /// The real thing on this host: etcd-server is installed on every machine the tests run
    /// on (`.ci/run` installs it).
    #[test]
    fn dpkg_reports_the_installed_etcd_server() {
        let v = Dpkg
            .installed(&["etcd-server", "surely-not-a-package-pangaea"])
            .expect("dpkg-query runs (Debian host)");
        assert!(
            v.get("etcd-server").is_some_and(|v| !v.is_empty()),
            "etcd-server not installed: apt-get install etcd-server ({v:?})"
        );
        assert!(!v.contains_key("surely-not-a-package-pangaea"));
    }
}
