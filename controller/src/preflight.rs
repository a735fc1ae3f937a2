//! What `up` checks before it creates anything: that every artifact a node will download
//! can be had, from the mirror or from its source right now. Without this check a machine
//! without internet spent 10 s retrying the first artifact, failed, and was fixed one
//! artifact per attempt; now every source is asked at once, for at most
//! [`PROBE_TIMEOUT`], and one message lists all that cannot be had with the way forward.

use crate::mirror::Mirror;
use pangaea_artifact::{FetchError, Sources};
use pangaea_compiler::artifact_set::{ArtifactEntry, ArtifactSet, ArtifactSource};
use pangaea_compiler::config::Loaded;
use pangaea_compiler::model::ClusterModel;
use std::fmt;
use std::time::Duration;

/// How long one source may take to start answering. The probes run at once, so the whole
/// check ends within this (and `up` within 10 s on a machine that cannot reach a source).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// Each artifact some node of `model` downloads, once however many nodes take it, in the
/// order nodes list them.
pub fn wanted<'s>(set: &'s ArtifactSet, model: &ClusterModel) -> Vec<&'s ArtifactEntry> {
    let mut wanted: Vec<&ArtifactEntry> = Vec::new();
    for n in &model.nodes {
        for (a, _) in pangaea_compiler::node::downloads(set, n) {
            if !wanted.iter().any(|w| w.name == a.name) {
                wanted.push(a);
            }
        }
    }
    wanted
}

/// An artifact that neither the mirror holds nor its source serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// The artifact's name in the set (`etcd`, `containerd`, …).
    pub name: String,
    /// Its version.
    pub version: String,
    /// Where it was asked for.
    pub url: String,
    /// Why it cannot be had, in a few words (the transport's own last words).
    pub reason: String,
}

/// Every artifact nodes of `loaded`'s cluster would download that cannot be had now. With
/// `artifactSource: os-packages` only the artifacts the configuration names are checked: the
/// others come from this machine's packages, whose import reports what is missing.
pub async fn unavailable_artifacts(loaded: &Loaded, mirror: &Mirror) -> Vec<Unavailable> {
    let set = loaded.artifact_set();
    let model = ClusterModel::build(loaded);
    let configured = |a: &ArtifactEntry| loaded.config.artifacts.iter().any(|o| o.name == a.name);
    let check: Vec<&ArtifactEntry> = wanted(&set, &model)
        .into_iter()
        .filter(|a| match loaded.config.artifact_source {
            ArtifactSource::Pinned => true,
            ArtifactSource::OsPackages => configured(a),
        })
        .filter(|a| !mirror.has(&a.digest()))
        .collect();
    let sources = Sources::standard();
    let probes = check.iter().map(|a| probe(&sources, a));
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Asks `a`'s source for its first bytes; `None` when it answers with content.
async fn probe(sources: &Sources, a: &ArtifactEntry) -> Option<Unavailable> {
    let answer = match sources.for_url(&a.url) {
        Ok(source) => tokio::time::timeout(PROBE_TIMEOUT, source.open(&a.url, 0)).await,
        Err(e) => Ok(Err(e)),
    };
    let reason = match answer {
        Ok(Ok(_body)) => return None,
        Ok(Err(e)) => short_reason(&e),
        Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
    };
    Some(Unavailable {
        name: a.name.clone(),
        version: a.version.clone(),
        url: a.url.clone(),
        reason,
    })
}

/// The end of a fetch error's chain, where the cause is ("dns error: …", "Connection
/// refused"), without the URL the listing already shows.
fn short_reason(e: &FetchError) -> String {
    match e {
        FetchError::Http { status, .. } => format!("HTTP status {status}"),
        FetchError::Transport { message, .. } => {
            let parts: Vec<&str> = message.split(": ").collect();
            parts[parts.len().saturating_sub(2)..].join(": ")
        }
        other => other.to_string(),
    }
}

/// `up`'s refusal when artifacts cannot be had: all of them, and what to do.
#[derive(Debug)]
pub struct ArtifactsUnavailable {
    /// What cannot be had.
    pub missing: Vec<Unavailable>,
    /// The configuration file (where the fixes go).
    pub config: String,
    /// Whether the configuration already takes binaries from the OS packages.
    pub os_packages: bool,
}

impl fmt::Display for ArtifactsUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.missing.len();
        writeln!(
            f,
            "{n} artifact{} the nodes need cannot be downloaded here; nothing was created:",
            if n == 1 { "" } else { "s" }
        )?;
        let width = self.missing.iter().map(|m| m.name.len()).max().unwrap_or(0);
        for m in &self.missing {
            writeln!(f, "  {:width$}  {}  {}", m.name, m.url, m.reason)?;
        }
        let config = &self.config;
        writeln!(f, "Ways forward:")?;
        if !self.os_packages {
            writeln!(
                f,
                "  - No internet, only the OS package mirror? Take etcd, containerd, runc and the CNI\n    \
                 plugins from this machine's Debian packages:\n      \
                 pangaea-ctl up --artifact-source os-packages\n    \
                 (it records the line `artifactSource: os-packages` in {config})."
            )?;
        }
        write!(
            f,
            "  - Behind a proxy? Set HTTPS_PROXY (and NO_PROXY) for pangaea-ctl.\n  \
             - Have the files? `pangaea-ctl artifacts import FILE` puts each in the mirror.\n  \
             - Can do without one? Disable it in {config}:\n      \
             artifacts:\n        - name: {}\n          disabled: true\n    \
             (`pangaea-ctl artifacts list` shows the pinned set.)",
            self.missing[0].name
        )
    }
}

impl std::error::Error for ArtifactsUnavailable {}

/// Fails with [`ArtifactsUnavailable`] when some artifact cannot be had.
pub async fn check_artifacts(loaded: &Loaded, mirror: &Mirror) -> Result<(), ArtifactsUnavailable> {
    let missing = unavailable_artifacts(loaded, mirror).await;
    if missing.is_empty() {
        return Ok(());
    }
    Err(ArtifactsUnavailable {
        missing,
        config: loaded.file.clone(),
        os_packages: loaded.config.artifact_source == ArtifactSource::OsPackages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reason_keeps_the_cause_not_the_url() {
        let e = FetchError::Transport {
            url: "https://dl.k8s.io/x".into(),
            message:
                "error sending request for url (https://dl.k8s.io/x): client error (Connect): \
                      dns error: failed to lookup address information: Name or service not known"
                    .into(),
        };
        assert_eq!(
            short_reason(&e),
            "failed to lookup address information: Name or service not known"
        );
        let e = FetchError::Http {
            url: "u".into(),
            status: 404,
        };
        assert_eq!(short_reason(&e), "HTTP status 404");
    }
}
