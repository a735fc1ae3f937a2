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

/// The variables each tool takes, by name (what `--unset` removes).
fn names(tool: EnvTool) -> &'static [&'static str] {
    match tool {
        EnvTool::All => &[],
        EnvTool::Kubectl => &["KUBECONFIG"],
        EnvTool::Etcdctl => &[
            "ETCDCTL_API",
            "ETCDCTL_ENDPOINTS",
            "ETCDCTL_CACERT",
            "ETCDCTL_CERT",
            "ETCDCTL_KEY",
        ],
        EnvTool::Gcloud => &["CLOUDSDK_CORE_PROJECT", "CLOUDSDK_COMPUTE_REGION"],
        EnvTool::Vagrant => &["VAGRANT_CWD"],
    }
}

/// The tools that apply to a cluster on `provider`.
fn tools(provider: &Provider) -> Vec<EnvTool> {
    let mut t = vec![EnvTool::Kubectl, EnvTool::Etcdctl];
    match provider {
        Provider::Gce(_) => t.push(EnvTool::Gcloud),
        Provider::Vagrant(_) => t.push(EnvTool::Vagrant),
        Provider::Local => {}
    }
    t
}

fn absolute(p: std::path::PathBuf) -> String {
    std::path::absolute(&p).unwrap_or(p).display().to_string()
}

/// Runs `env`.
pub fn run(ctx: &Ctx, tool: EnvTool, shell: Option<Shell>, unset: bool) -> anyhow::Result<()> {
    let shell = shell.unwrap_or_else(Shell::detect);
    let loaded = pangaea_compiler::config::Loaded::load(&ctx.config)?;
    let provider = &loaded.config.provider;
    let applicable = tools(provider);
    let wanted: Vec<EnvTool> = match tool {
        EnvTool::All => applicable.clone(),
        t if applicable.contains(&t) => vec![t],
        t => {
            use clap::ValueEnum;
            let name = t.to_possible_value().expect("every tool has a name");
            anyhow::bail!(
                "`env {}`: cluster {} runs on provider {}, which has no {} settings",
                name.get_name(),
                loaded.config.name,
                provider.kind(),
                name.get_name()
            )
        }
    };
    let mut lines = Vec::new();
    for t in wanted {
        if unset {
            lines.extend(names(t).iter().map(|k| shell.unset(k)));
            continue;
        }
        let vars: Vec<(&str, String)> = match t {
            EnvTool::All => vec![],
            EnvTool::Kubectl => {
                let k = ctx.state.admin_kubeconfig();
                if !k.exists() {
                    crate::errln!(
                        "note: {} does not exist yet: `pangaea-ctl up` writes it",
                        k.display()
                    );
                }
                vec![("KUBECONFIG", absolute(k))]
            }
            EnvTool::Etcdctl => crate::etcd::operator_env(&ctx.compilation()?)?,
            EnvTool::Gcloud => {
                let Provider::Gce(g) = provider else {
                    unreachable!("gcloud applies to GCE clusters only")
                };
                let env = crate::provider::gce::GcloudEnv::from_env();
                let mut v = Vec::new();
                if let Some(p) = crate::provider::gce::project(g, &env) {
                    v.push(("CLOUDSDK_CORE_PROJECT", p));
                }
                if let Some(r) = crate::provider::gce::region(g, &env) {
                    v.push(("CLOUDSDK_COMPUTE_REGION", r));
                }
                v
            }
            EnvTool::Vagrant => vec![("VAGRANT_CWD", absolute(ctx.state.vagrant()))],
        };
        lines.extend(vars.iter().map(|(k, v)| shell.set(k, v)));
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
            tools(&Provider::Local),
            [EnvTool::Kubectl, EnvTool::Etcdctl]
        );
        assert!(tools(&Provider::Gce(Default::default())).contains(&EnvTool::Gcloud));
        assert!(tools(&Provider::Vagrant(Default::default())).contains(&EnvTool::Vagrant));
    }
}
