//! The agent's configuration file (YAML), written by cloud-init on the node.
//!
//! ```yaml
//! controller: ["10.213.0.1:7443"]      # HOST:PORT of the controller, tried in order
//! ca_pin: "sha256:<64 hex>"            # SPKI SHA-256 of the controller CA
//! token_file: /etc/pangaea/bootstrap-token   # deleted after a successful join
//! recovery_token_file: /var/lib/pangaea/seed/recovery-token   # put there by the provider
//! metadata_server: 169.254.169.254     # GCE: a recovery token may be in the instance's metadata
//! node_name: node-1                    # optional; defaults to the hostname
//! state_dir: /var/lib/pangaea-agent    # identity and the last applied assignment
//! root: /                              # prefix for every path of the assignment
//! report_interval_seconds: 15
//! ```

use pangaea_core::pin::SpkiPin;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Why the configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("read agent config {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("agent config {path}{location}: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// `:line:column` of the error, when known.
        location: String,
        /// What is wrong.
        message: String,
    },
}

/// The agent's configuration (see the module documentation for the file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `HOST:PORT` of the controller, tried in order.
    pub controller: Vec<String>,
    /// SPKI SHA-256 of the controller CA, trusted before the node has joined.
    #[serde(deserialize_with = "de_pin")]
    pub ca_pin: SpkiPin,
    /// The bootstrap token; deleted after a successful join.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// A recovery token the provider's seed puts on the node when `up` finds it stuck (it
    /// never joined and its bootstrap token expired, or its identity expired while the
    /// cluster was off). Read-only to the agent; tried after `token_file`.
    #[serde(default = "default_recovery_token_file")]
    pub recovery_token_file: PathBuf,
    /// `HOST[:PORT]` of the cloud's metadata server, on clouds where `up` cannot write a
    /// node's seed and sets the recovery token as an instance metadata item instead
    /// (Compute Engine: [`crate::metadata`]). Tried after the files; absent elsewhere.
    #[serde(default)]
    pub metadata_server: Option<String>,
    /// The name the node asks for; defaults to its hostname.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Overrides the instance ID read from cloud-init or /etc/machine-id (tests).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Where the identity and the last applied assignment are kept.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Prefix for every path of the assignment (`/` on a node).
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Seconds between health reports.
    #[serde(default = "default_report_interval")]
    pub report_interval_seconds: u64,
    /// Use the built-in recording service manager instead of systemd (tests without root).
    #[serde(default)]
    pub fake_systemd: bool,
}

fn default_token_file() -> PathBuf {
    "/etc/pangaea/bootstrap-token".into()
}
fn default_recovery_token_file() -> PathBuf {
    pangaea_core::token::RECOVERY_TOKEN_FILE.into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/pangaea-agent".into()
}
fn default_root() -> PathBuf {
    "/".into()
}
fn default_report_interval() -> u64 {
    15
}

/// Field validators prefix their errors with `<key>: `, because the YAML parser reports
/// them at the start of the document; [`locate`] then finds the key's line.
fn de_pin<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SpkiPin, D::Error> {
    let s = String::deserialize(d)?;
    SpkiPin::parse(&s).map_err(|e| serde::de::Error::custom(format!("ca_pin: {e}")))
}

/// `:line:column` of an error: the parser's, or for validator errors, the key's.
fn locate(text: &str, err: &serde_norway::Error) -> String {
    let parser = err.location().map(|l| (l.line(), l.column()));
    let message = err.to_string();
    let key = message
        .split_once(": ")
        .map(|(k, _)| k)
        .filter(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    let from_key = key.and_then(|k| {
        text.lines()
            .position(|l| l.starts_with(&format!("{k}:")))
            .map(|i| (i + 1, 1))
    });
    match (parser, from_key) {
        (Some((1, 1)), Some(k)) | (None, Some(k)) => format!(":{}:{}", k.0, k.1),
        (Some((l, c)), _) => format!(":{l}:{c}"),
        (None, None) => String::new(),
    }
}

impl AgentConfig {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        AgentConfig::parse(path, &text)
    }

    /// Checks the configuration `text` (errors name `path` with line and column).
    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            location: locate(text, &e),
            message: e.to_string(),
        })?;
        if cfg.controller.is_empty() {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                location: String::new(),
                message: "`controller` must list at least one HOST:PORT".into(),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = AgentConfig::parse(
            Path::new("a.yaml"),
            &format!("controller: [\"h:1\"]\nca_pin: \"{PIN}\"\n"),
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/pangaea-agent"));
        assert_eq!(c.report_interval_seconds, 15);
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = AgentConfig::parse(
            Path::new("a.yaml"),
            &format!("controller: [\"h:1\"]\nca_pin: \"{PIN}\"\nbogus: 1\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.yaml:3:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = AgentConfig::parse(
            Path::new("a.yaml"),
            "controller: [\"h:1\"]\nca_pin: \"sha256:12\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.yaml:2:"), "{e}");
    }
}
