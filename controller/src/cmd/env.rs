//! `pangaea-ctl env [TOOL] [--shell bash|zsh|fish] [--unset]`: shell settings that point
//! the cluster's tools at it, made to be evaluated: `eval "$(pangaea-ctl env)"`.

use super::Ctx;
use crate::cli::EnvTool;
use pangaea_compiler::provider::Provider;

/// The syntax printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// `export K='v'` / `unset K`.
    Bash,
    /// The same as bash.
    Zsh,
    /// `set -gx K 'v';` / `set -e K;`.
    Fish,
}

impl Shell {
    /// The shell of `$SHELL`: fish, else bash syntax.
    fn detect() -> Shell {
        match std::env::var("SHELL") {
            Ok(s) if s.ends_with("/fish") || s == "fish" => Shell::Fish,
            _ => Shell::Bash,
        }
    }

    /// The line that sets `key` to `value`.
    pub fn set(self, key: &str, value: &str) -> String {
        match self {
            Shell::Bash | Shell::Zsh => format!("export {key}={}", posix_quote(value)),
            Shell::Fish => format!("set -gx {key} {};", fish_quote(value)),
        }
    }

    /// The line that removes `key`.
    pub fn unset(self, key: &str) -> String {
        match self {
            Shell::Bash | Shell::Zsh => format!("unset {key}"),
            Shell::Fish => format!("set -e {key};"),
        }
    }
}

/// `v` as one POSIX shell word: as it is when every character is plain, else in single
/// quotes (a `'` inside as `'\''`).
pub fn posix_quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

/// `v` as one fish word: single-quoted, `\` and `'` escaped.
fn fish_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', r"\\").replace('\'', r"\'"))
}

/// The variables each tool takes on `provider`, by name (what `--unset` removes; NFS's
/// are numbered by entry, see [`nfs_vars`]).
fn names(tool: EnvTool, provider: &Provider) -> &'static [&'static str] {
    match tool {
        EnvTool::Ssh => match provider {
            Provider::Gce(_) => names(EnvTool::Gcloud, provider),
            Provider::Vagrant(_) => names(EnvTool::Vagrant, provider),
            Provider::Local => &[],
        },
        EnvTool::All | EnvTool::Docker | EnvTool::Nfs => &[],
        EnvTool::Kubectl => &["KUBECONFIG"],
        EnvTool::Etcdctl => &[
            "ETCDCTL_API",
            "ETCDCTL_ENDPOINTS",
            "ETCDCTL_CACERT",
            "ETCDCTL_CERT",
            "ETCDCTL_KEY",
        ],
        EnvTool::Gcloud => &[
            "CLOUDSDK_CORE_PROJECT",
            "CLOUDSDK_COMPUTE_REGION",
            "CLOUDSDK_COMPUTE_ZONE",
        ],
        EnvTool::Vagrant => &["VAGRANT_CWD"],
    }
}

/// The tools that apply to a cluster on `provider` with `nfs` entries.
fn tools(provider: &Provider, nfs: usize) -> Vec<EnvTool> {
    let mut t = vec![EnvTool::Kubectl, EnvTool::Etcdctl];
    match provider {
        Provider::Gce(_) => t.extend([EnvTool::Gcloud, EnvTool::Ssh]),
        Provider::Vagrant(_) => t.extend([EnvTool::Vagrant, EnvTool::Ssh]),
        Provider::Local => {}
    }
    if nfs > 0 {
        t.push(EnvTool::Nfs);
    }
    t
}

/// Why `tool` has no settings for this cluster, with the way to do what it is for.
fn not_applicable(tool: EnvTool, cluster: &str, provider: &Provider) -> String {
    let kind = provider.kind();
    match tool {
        EnvTool::Docker => format!(
            "`env docker`: cluster {cluster}'s nodes run containerd, not Docker, so there is no Docker daemon for DOCKER_HOST: load an image into every node with `pangaea-ctl image load ARCHIVE` (`docker save IMAGE -o ARCHIVE` makes one), and list them with `pangaea-ctl ssh NODE -- ctr -n k8s.io images ls`"
        ),
        EnvTool::Ssh => format!(
            "`env ssh`: cluster {cluster} runs on provider {kind}, whose nodes have no SSH server: `pangaea-ctl ssh NODE [-- CMD]` opens a shell (or runs CMD) on any node"
        ),
        EnvTool::Nfs => format!(
            "`env nfs`: cluster {cluster} mounts no NFS export (no `nfs:` entry in pangaea.yaml)"
        ),
        t => {
            use clap::ValueEnum;
            let name = t.to_possible_value().expect("every tool has a name");
            let name = name.get_name();
            format!(
                "`env {name}`: cluster {cluster} runs on provider {kind}, which has no {name} settings"
            )
        }
    }
}

/// `PANGAEA_NFS_SERVER`, `_EXPORT` and `_MOUNT` of each `nfs` entry: the first as they are,
/// the n-th with the suffix `_n`.
fn nfs_vars(nfs: &[pangaea_compiler::config::NfsMount]) -> Vec<(String, String)> {
    nfs.iter()
        .enumerate()
        .flat_map(|(i, m)| {
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("_{}", i + 1)
            };
            [
                (format!("PANGAEA_NFS_SERVER{suffix}"), m.server.clone()),
                (format!("PANGAEA_NFS_EXPORT{suffix}"), m.export.clone()),
                (format!("PANGAEA_NFS_MOUNT{suffix}"), m.mount.clone()),
            ]
        })
        .collect()
}

/// gcloud's settings for GCE cluster `g`: its project, region and first zone.
fn gcloud_vars(g: &pangaea_compiler::provider::GceProvider) -> Vec<(String, String)> {
    use crate::provider::gce;
    let env = gce::GcloudEnv::from_env();
    [
        ("CLOUDSDK_CORE_PROJECT", gce::project(g, &env)),
        ("CLOUDSDK_COMPUTE_REGION", gce::region(g, &env)),
        ("CLOUDSDK_COMPUTE_ZONE", gce::zone(g, &env)),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_owned(), v?)))
    .collect()
}

fn absolute(p: std::path::PathBuf) -> String {
    std::path::absolute(&p).unwrap_or(p).display().to_string()
}

/// Runs `env`.
pub fn run(ctx: &Ctx, tool: EnvTool, shell: Option<Shell>, unset: bool) -> anyhow::Result<()> {
    let shell = shell.unwrap_or_else(Shell::detect);
    let loaded = pangaea_compiler::config::Loaded::load(&ctx.config)?;
    let provider = &loaded.config.provider;
    let nfs = &loaded.config.nfs;
    let applicable = tools(provider, nfs.len());
    let wanted: Vec<EnvTool> = match tool {
        EnvTool::All => applicable.clone(),
        t if applicable.contains(&t) => vec![t],
        t => anyhow::bail!(not_applicable(t, &loaded.config.name, provider)),
    };
    let mut lines = Vec::new();
    let vagrant_cwd = || vec![("VAGRANT_CWD".to_owned(), absolute(ctx.state.vagrant()))];
    let mut seen = std::collections::BTreeSet::new();
    for t in wanted {
        let vars: Vec<(String, String)> = match t {
            EnvTool::Nfs => nfs_vars(nfs),
            _ if unset => names(t, provider)
                .iter()
                .map(|k| (k.to_string(), String::new()))
                .collect(),
            EnvTool::All | EnvTool::Docker => vec![],
            EnvTool::Kubectl => {
                let k = ctx.state.admin_kubeconfig();
                if !k.exists() {
                    crate::errln!(
                        "note: {} does not exist yet: `pangaea-ctl up` writes it",
                        k.display()
                    );
                }
                vec![("KUBECONFIG".to_owned(), absolute(k))]
            }
            EnvTool::Etcdctl => crate::etcd::operator_env(&ctx.compilation()?)?
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            EnvTool::Gcloud => match provider {
                Provider::Gce(g) => gcloud_vars(g),
                _ => unreachable!("gcloud applies to GCE clusters only"),
            },
            EnvTool::Vagrant => vagrant_cwd(),
            EnvTool::Ssh => match provider {
                Provider::Gce(g) => gcloud_vars(g),
                Provider::Vagrant(_) => vagrant_cwd(),
                Provider::Local => unreachable!("ssh applies to VM providers only"),
            },
        };
        // `env all` on a VM cluster names some variables twice (gcloud and ssh).
        for (k, v) in vars {
            if seen.insert(k.clone()) {
                lines.push(if unset {
                    shell.unset(&k)
                } else {
                    shell.set(&k, &v)
                });
            }
        }
    }
    for l in lines {
        crate::outln!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_one_word_in_each_shell() {
        assert_eq!(Shell::Bash.set("K", "/a/b-c.d"), "export K=/a/b-c.d");
        assert_eq!(Shell::Zsh.set("K", "it's $x"), r"export K='it'\''s $x'");
        assert_eq!(Shell::Bash.set("K", ""), "export K=''");
        assert_eq!(Shell::Fish.set("K", r"it's \n"), r"set -gx K 'it\'s \\n';");
        assert_eq!(Shell::Bash.unset("K"), "unset K");
        assert_eq!(Shell::Fish.unset("K"), "set -e K;");
    }

    #[test]
    fn each_provider_has_its_tools() {
        assert_eq!(
            tools(&Provider::Local, 0),
            [EnvTool::Kubectl, EnvTool::Etcdctl]
        );
        assert_eq!(
            tools(&Provider::Gce(Default::default()), 0),
            [
                EnvTool::Kubectl,
                EnvTool::Etcdctl,
                EnvTool::Gcloud,
                EnvTool::Ssh
            ]
        );
        assert_eq!(
            tools(&Provider::Vagrant(Default::default()), 1),
            [
                EnvTool::Kubectl,
                EnvTool::Etcdctl,
                EnvTool::Vagrant,
                EnvTool::Ssh,
                EnvTool::Nfs
            ]
        );
        // Docker applies nowhere, and says what to do instead.
        for p in [
            Provider::Local,
            Provider::Gce(Default::default()),
            Provider::Vagrant(Default::default()),
        ] {
            assert!(!tools(&p, 1).contains(&EnvTool::Docker));
            assert!(not_applicable(EnvTool::Docker, "c", &p).contains("pangaea-ctl image load"));
        }
        assert!(
            not_applicable(EnvTool::Ssh, "c", &Provider::Local).contains("pangaea-ctl ssh NODE")
        );
        assert_eq!(
            names(EnvTool::Ssh, &Provider::Vagrant(Default::default())),
            ["VAGRANT_CWD"]
        );
    }

    #[test]
    fn nfs_entries_are_numbered_after_the_first() {
        let m = |s: &str| pangaea_compiler::config::NfsMount {
            server: s.into(),
            export: format!("/export/{s}"),
            mount: format!("/mnt/{s}"),
        };
        let v = nfs_vars(&[m("a"), m("b")]);
        let keys: Vec<&str> = v.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "PANGAEA_NFS_SERVER",
                "PANGAEA_NFS_EXPORT",
                "PANGAEA_NFS_MOUNT",
                "PANGAEA_NFS_SERVER_2",
                "PANGAEA_NFS_EXPORT_2",
                "PANGAEA_NFS_MOUNT_2"
            ]
        );
        assert_eq!(v[4].1, "/export/b");
    }
}
