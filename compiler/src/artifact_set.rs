//! The pinned default artifact set (`compiler/artifacts.yaml`, embedded) and overrides.
//!
//! Every binary a node runs is pinned here by version, URL and the digest its upstream
//! publishes, so a compilation decides exactly which bytes nodes install; `artifacts:` in
//! `pangaea.yaml` can move an entry to another source or replace it.

use pangaea_artifact::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const DEFAULTS: &str = include_str!("../artifacts.yaml");

/// Why an artifact set (or an override of it) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactSetError {
    /// The YAML does not parse or has the wrong shape.
    #[error("artifact set {origin}{location}: {message}")]
    Parse {
        /// Where the set came from (a file, or the built-in set).
        origin: String,
        /// `:line:column`, when known.
        location: String,
        /// The parser's message.
        message: String,
    },
    /// One entry is invalid (digest, URL scheme, a duplicate name, an incomplete new entry).
    #[error("artifact set {origin}: entry {name:?}: {message}")]
    Invalid {
        /// Where the set came from.
        origin: String,
        /// The entry's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
}

/// One pinned artifact.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArtifactEntry {
    /// What the compiler asks for it by (`etcd`, `kubernetes-server`, …).
    pub name: String,
    /// Upstream version; part of the cached archive's file name on nodes.
    #[serde(default)]
    pub version: String,
    /// Where nodes (or the controller's mirror) download it.
    pub url: String,
    /// The digest it must have (`sha256:…` or `sha512:…`), validated when the set loads.
    pub digest: String,
    /// Short name → path inside the archive (empty for a plain file).
    #[serde(default)]
    pub members: BTreeMap<String, String>,
    /// Left out of nodes' assignments (no source for it here); the units that need it
    /// report the missing binary instead of starting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl ArtifactEntry {
    /// The entry's digest, typed.
    pub fn digest(&self) -> Digest {
        Digest::parse(&self.digest).expect("validated when the set was loaded")
    }
}

/// The artifacts a cluster's nodes install.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSet {
    /// Version of the built-in set, bumped with any change to it.
    pub set_version: u32,
    /// CPU architecture of the binaries (`amd64`).
    pub arch: String,
    /// The entries, by unique name.
    pub artifacts: Vec<ArtifactEntry>,
}

/// Where the cluster's binaries come from: `artifactSource:` in `pangaea.yaml`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactSource {
    /// The pinned upstream releases of this set, fetched once into the controller's mirror.
    #[default]
    Pinned,
    /// The binaries of the operator's installed OS packages (Debian's `etcd-server`,
    /// `containerd`, `runc`, `containernetworking-plugins`), for machines that reach only
    /// their package mirror. The controller imports them (the table of which package gives
    /// which binary is its `os_packages` module); artifacts no installed package provides are
    /// left out, and reported. Entries named in `artifacts:` stay as configured there.
    OsPackages,
}

impl ArtifactSource {
    /// Its spelling in `pangaea.yaml` (and in `up --artifact-source`).
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactSource::Pinned => "pinned",
            ArtifactSource::OsPackages => "os-packages",
        }
    }

    /// The source spelled `s`, as in `pangaea.yaml`.
    pub fn parse(s: &str) -> Option<ArtifactSource> {
        [ArtifactSource::Pinned, ArtifactSource::OsPackages]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// An override: any subset of fields for an entry named like a default (or a new entry
/// when `url` and `digest` are both given).
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArtifactOverride {
    /// The entry to override or add.
    pub name: String,
    /// Replaces the entry's version.
    pub version: Option<String>,
    /// Replaces the entry's URL (alone: the same content from another place).
    pub url: Option<String>,
    /// Replaces the entry's digest.
    pub digest: Option<String>,
    /// Replaces the entry's archive members.
    pub members: Option<BTreeMap<String, String>>,
    /// Leaves the entry out of (or back in) nodes' assignments.
    pub disabled: Option<bool>,
}

impl ArtifactSet {
    /// The built-in set, embedded at build time.
    pub fn defaults() -> ArtifactSet {
        ArtifactSet::parse("compiler/artifacts.yaml (built in)", DEFAULTS)
            .expect("the built-in artifact set is valid")
    }

    /// Parses and validates a set; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<ArtifactSet, ArtifactSetError> {
        let set: ArtifactSet =
            serde_norway::from_str(text).map_err(|e| ArtifactSetError::Parse {
                origin: origin.into(),
                location: e
                    .location()
                    .map(|l| format!(":{}:{}", l.line(), l.column()))
                    .unwrap_or_default(),
                message: e.to_string(),
            })?;
        set.validate(origin)?;
        Ok(set)
    }

    fn validate(&self, origin: &str) -> Result<(), ArtifactSetError> {
        for a in &self.artifacts {
            let invalid = |message: String| ArtifactSetError::Invalid {
                origin: origin.into(),
                name: a.name.clone(),
                message,
            };
            Digest::parse(&a.digest).map_err(|e| invalid(e.to_string()))?;
            if !["https://", "http://", "file://"]
                .iter()
                .any(|s| a.url.starts_with(s))
            {
                return Err(invalid(format!(
                    "url {:?} must be https://, http:// or file://",
                    a.url
                )));
            }
            if self.artifacts.iter().filter(|b| b.name == a.name).count() > 1 {
                return Err(invalid("appears twice".into()));
            }
        }
        Ok(())
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&ArtifactEntry> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    /// Which downloads give a node `binaries` (`kubelet`, `etcd`, …), each download with the
    /// binaries taken from it: the one rule for what a node fetches.
    ///
    /// - A single-file entry named after a binary (`runc`, or a per-binary Kubernetes
    ///   download `kubelet`) is that binary's own download and always wins: it is exactly
    ///   the bytes needed.
    /// - The rest come from archives, chosen greedily: the archive giving the most of the
    ///   binaries still missing; on a tie the one listing fewer members, the narrower
    ///   download (`kubernetes-node` rather than `kubernetes-server` for a worker's
    ///   `kubelet` and `kube-proxy`); then set order.
    /// - Disabled entries give nothing; a binary nothing gives is left out, and the unit
    ///   that runs it reports the missing program.
    pub fn cover<'s>(&'s self, binaries: &[&str]) -> Vec<(&'s ArtifactEntry, Vec<String>)> {
        let enabled = || self.artifacts.iter().filter(|a| !a.disabled);
        let mut chosen: Vec<(&ArtifactEntry, Vec<String>)> = Vec::new();
        let mut missing: Vec<&str> = Vec::new();
        for (i, &b) in binaries.iter().enumerate() {
            if binaries[..i].contains(&b) {
                continue;
            }
            match enabled().find(|a| a.members.is_empty() && a.name == b) {
                Some(a) => chosen.push((a, vec![b.to_owned()])),
                None => missing.push(b),
            }
        }
        loop {
            let gives = |a: &ArtifactEntry| {
                missing
                    .iter()
                    .filter(|b| a.members.contains_key(**b))
                    .count()
            };
            let best = enabled()
                .filter(|a| gives(a) > 0)
                .min_by_key(|a| (std::cmp::Reverse(gives(a)), a.members.len()));
            let Some(a) = best else { break };
            let (taken, rest): (Vec<&str>, Vec<&str>) =
                missing.iter().partition(|b| a.members.contains_key(**b));
            chosen.push((a, taken.into_iter().map(str::to_owned).collect()));
            missing = rest;
        }
        // In set order, so a node's downloads read (and diff) the same way every time.
        chosen.sort_by_key(|(a, _)| self.artifacts.iter().position(|e| e.name == a.name));
        chosen
    }

    /// Applies overrides by name. A new URL without a digest keeps the pinned digest: the
    /// same content from another place (a local mirror).
    pub fn with_overrides(
        mut self,
        origin: &str,
        overrides: &[ArtifactOverride],
    ) -> Result<ArtifactSet, ArtifactSetError> {
        for o in overrides {
            let invalid = |message: &str| ArtifactSetError::Invalid {
                origin: origin.into(),
                name: o.name.clone(),
                message: message.into(),
            };
            match self.artifacts.iter_mut().find(|a| a.name == o.name) {
                Some(a) => {
                    if let Some(u) = &o.url {
                        a.url = u.clone();
                    }
                    if let Some(d) = &o.digest {
                        a.digest = d.clone();
                    }
                    if let Some(v) = &o.version {
                        a.version = v.clone();
                    }
                    if let Some(m) = &o.members {
                        a.members = m.clone();
                    }
                    if let Some(d) = o.disabled {
                        a.disabled = d;
                    }
                }
                None => {
                    let (Some(url), Some(digest)) = (&o.url, &o.digest) else {
                        return Err(invalid("a new artifact needs both url and digest"));
                    };
                    self.artifacts.push(ArtifactEntry {
                        name: o.name.clone(),
                        version: o.version.clone().unwrap_or_default(),
                        url: url.clone(),
                        digest: digest.clone(),
                        members: o.members.clone().unwrap_or_default(),
                        disabled: o.disabled.unwrap_or(false),
                    });
                }
            }
        }
        self.validate(origin)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Kubernetes binaries of the default set, each its own download.
    const KUBERNETES: [&str; 6] = [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "kubectl",
    ];

    #[test]
    fn defaults_parse_and_pin_every_artifact() {
        let set = ArtifactSet::defaults();
        for name in
            KUBERNETES
                .iter()
                .chain(&["etcd", "containerd", "runc", "cni-plugins", "crictl"])
        {
            let a = set.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(a.url.starts_with("https://"), "{name}");
        }
        for name in KUBERNETES {
            let a = set.get(name).unwrap();
            assert_eq!(
                a.url,
                format!("https://dl.k8s.io/release/v1.35.1/bin/linux/amd64/{name}")
            );
            assert!(a.members.is_empty(), "{name} is a single file");
            assert_eq!(a.digest().kind, pangaea_artifact::DigestKind::Sha256);
        }
        assert_eq!(
            set.get("etcd").unwrap().members["etcd"],
            "etcd-v3.5.27-linux-amd64/etcd"
        );
    }

    /// The entries `cover` picks for `binaries`, with what each gives.
    fn picks(set: &ArtifactSet, binaries: &[&str]) -> Vec<(String, Vec<String>)> {
        set.cover(binaries)
            .into_iter()
            .map(|(a, b)| (a.name.clone(), b))
            .collect()
    }

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The defaults with the release's two Kubernetes tarballs added as archives.
    fn with_tarballs(disable_single_files: bool) -> ArtifactSet {
        let d = format!("sha512:{}", "a".repeat(128));
        let tarball = |name: &str, dir: &str, bins: &[&str]| ArtifactOverride {
            name: name.into(),
            url: Some(format!(
                "https://dl.k8s.io/v1.35.1/{name}-linux-amd64.tar.gz"
            )),
            digest: Some(d.clone()),
            members: Some(
                bins.iter()
                    .map(|b| ((*b).to_owned(), format!("kubernetes/{dir}/bin/{b}")))
                    .collect(),
            ),
            ..Default::default()
        };
        let mut overrides = vec![
            tarball("kubernetes-server", "server", &KUBERNETES),
            tarball(
                "kubernetes-node",
                "node",
                &["kubelet", "kube-proxy", "kubectl"],
            ),
        ];
        if disable_single_files {
            overrides.extend(KUBERNETES.iter().map(|b| ArtifactOverride {
                name: (*b).into(),
                disabled: Some(true),
                ..Default::default()
            }));
        }
        ArtifactSet::defaults()
            .with_overrides("test", &overrides)
            .unwrap()
    }

    #[test]
    fn each_node_takes_exactly_the_kubernetes_binaries_it_runs_one_download_each() {
        let set = ArtifactSet::defaults();
        assert_eq!(
            picks(&set, &["kubelet", "kube-proxy", "runc"]),
            vec![
                ("kubelet".into(), owned(&["kubelet"])),
                ("kube-proxy".into(), owned(&["kube-proxy"])),
                ("runc".into(), owned(&["runc"])),
            ]
        );
        let cp = [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
        ];
        assert_eq!(
            picks(&set, &cp),
            cp.iter()
                .map(|b| ((*b).to_owned(), owned(&[b])))
                .collect::<Vec<_>>(),
            "no kubelet or kube-proxy for a node that does not run pods"
        );
    }

    #[test]
    fn archives_cover_what_no_single_file_gives_the_widest_first_then_the_narrower() {
        let set = with_tarballs(true);
        assert_eq!(
            picks(&set, &["kubelet", "kube-proxy", "runc"]),
            vec![
                ("runc".into(), owned(&["runc"])),
                ("kubernetes-node".into(), owned(&["kubelet", "kube-proxy"])),
            ],
            "on a tie, the narrower archive (in set order: added entries come last)"
        );
        let cp = [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
            "kubelet",
            "kube-proxy",
        ];
        assert_eq!(
            picks(&set, &cp),
            vec![("kubernetes-server".into(), owned(&cp))],
            "one download, never the node archive beside it"
        );
    }

    #[test]
    fn a_single_file_entry_wins_over_archives_and_disabled_or_unknown_binaries_are_left_out() {
        let set = with_tarballs(false)
            .with_overrides(
                "test",
                &[ArtifactOverride {
                    name: "kube-proxy".into(),
                    disabled: Some(true),
                    ..Default::default()
                }],
            )
            .unwrap();
        assert_eq!(
            picks(
                &set,
                &["kubelet", "kube-proxy", "no-such-binary", "kubelet"]
            ),
            vec![
                ("kubelet".into(), owned(&["kubelet"])),
                ("kubernetes-node".into(), owned(&["kube-proxy"])),
            ],
            "kubelet from its own file; kube-proxy's is disabled, so from the narrower archive"
        );
    }

    #[test]
    fn overrides_replace_by_name_and_add_new_entries() {
        let d = format!("sha256:{}", "a".repeat(64));
        let set = ArtifactSet::defaults()
            .with_overrides(
                "test",
                &[
                    ArtifactOverride {
                        name: "etcd".into(),
                        url: Some("file:///usr/bin/etcd".into()),
                        digest: Some(d.clone()),
                        members: Some(BTreeMap::new()),
                        ..Default::default()
                    },
                    ArtifactOverride {
                        name: "extra".into(),
                        url: Some("https://example.invalid/x".into()),
                        digest: Some(d.clone()),
                        ..Default::default()
                    },
                ],
            )
            .unwrap();
        assert_eq!(set.get("etcd").unwrap().url, "file:///usr/bin/etcd");
        assert!(set.get("etcd").unwrap().members.is_empty());
        assert!(set.get("extra").is_some());
        let err = ArtifactSet::defaults()
            .with_overrides(
                "test",
                &[ArtifactOverride {
                    name: "new".into(),
                    url: Some("https://x.invalid/".into()),
                    ..Default::default()
                }],
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("needs both url and digest"),
            "{err}"
        );
        let err = ArtifactSet::defaults()
            .with_overrides(
                "test",
                &[ArtifactOverride {
                    name: "etcd".into(),
                    digest: Some("sha256:zz".into()),
                    ..Default::default()
                }],
            )
            .unwrap_err();
        assert!(err.to_string().contains("malformed digest"), "{err}");
    }

    #[test]
    fn malformed_sets_report_location() {
        let err = ArtifactSet::parse(
            "x.yaml",
            "set_version: 1\narch: amd64\nartifacts:\n  - name: a\n    bogus: 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.yaml:5:"), "{err}");
    }
}
