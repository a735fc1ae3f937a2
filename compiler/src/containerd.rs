//! Which containerd configuration a node gets: containerd 1.x reads configuration version 2
//! (CRI plugin `io.containerd.grpc.v1.cri`), 2.x reads version 3 (CRI split into
//! `io.containerd.cri.v1.runtime` and `.images`). containerd 1.6 silently ignores the
//! sections of a version 3 file it does not know — it starts, with `SystemdCgroup = false`,
//! and the kubelet's pods then fail on the cgroup driver mismatch — and 2.x migrates a
//! version 2 file in memory at every start, so the compiler renders the one that matches
//! the version in the artifact set.

/// A containerd configuration format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigVersion {
    /// `version = 2`, for containerd 1.x.
    V2,
    /// `version = 3`, for containerd 2.x.
    V3,
}

impl ConfigVersion {
    /// The format containerd `version` reads (`v2.2.1`, `1.6.20~ds1-1+deb12u3`). An empty
    /// version (an entry that does not say) is taken as the pinned default's, 2.x.
    pub fn for_containerd(version: &str) -> Result<ConfigVersion, String> {
        let v = version.trim().trim_start_matches('v');
        if v.is_empty() {
            return Ok(ConfigVersion::V3);
        }
        let major: u32 = v
            .split(['.', '~', '-', '+'])
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| {
                format!("containerd version {version:?} does not start with a major version number")
            })?;
        match major {
            1 => Ok(ConfigVersion::V2),
            2 => Ok(ConfigVersion::V3),
            _ => Err(format!(
                "containerd {version} is not supported: Pangaea renders configurations for containerd 1.x and 2.x"
            )),
        }
    }

    /// The template that renders it.
    pub fn template(self) -> &'static str {
        match self {
            ConfigVersion::V2 => "config/containerd-config-v2.toml",
            ConfigVersion::V3 => "config/containerd-config-v3.toml",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_major_version() {
        use ConfigVersion::*;
        for (version, want) in [
            ("v2.2.1", V3),
            ("2.0.0", V3),
            ("1.6.20~ds1-1+deb12u3", V2),
            ("v1.7.27", V2),
            ("", V3),
        ] {
            assert_eq!(
                ConfigVersion::for_containerd(version),
                Ok(want),
                "{version}"
            );
        }
        let e = ConfigVersion::for_containerd("3.0.0").unwrap_err();
        assert!(e.contains("containerd 3.0.0 is not supported"), "{e}");
        let e = ConfigVersion::for_containerd("latest").unwrap_err();
        assert!(e.contains("\"latest\""), "{e}");
    }
}
