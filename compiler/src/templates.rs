//! The templates: built into the binary from `templates/`, each overridable by a file of the
//! same name in the cluster's templates directory. Strict mode is on: a variable that does
//! not exist is an error naming the template and line, never an empty string.

use handlebars::Handlebars;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

macro_rules! builtin {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../templates/", $name, ".hbs")))),*]
    };
}

/// Every built-in template, by name (its path under `templates/` without `.hbs`).
pub const BUILTIN: &[(&str, &str)] = builtin![
    "units/etcd.service",
    "units/kube-apiserver.service",
    "units/kube-controller-manager.service",
    "units/kube-scheduler.service",
    "units/kubelet.service",
    "units/kube-proxy.service",
    "units/containerd.service",
    "units/pangaea-addons.service",
    "units/pangaea-api-lb.service",
    "units/disk-format.service",
    "units/disk.mount",
    "units/nfs.mount",
    "kubeconfig",
    "config/encryption-config.yaml",
    "config/audit-policy.yaml",
    "config/kubelet-config.yaml",
    "config/kube-proxy-config.yaml",
    "config/containerd-config-v2.toml",
    "config/containerd-config-v3.toml",
    "config/etcd-bootstrap.env",
    "node/logrotate-containers",
    "addons/flannel.yaml",
    "addons/coredns.yaml",
    "addons/metrics-server.yaml",
    "addons/logging.yaml",
    "addons/monitoring.yaml",
    "addons/registry-secret.yaml",
    "addons/user-secrets.yaml",
];

/// Why a template could not be loaded or rendered; every variant names the template (and,
/// where handlebars knows it, the line).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("template {name} ({origin}): {message}")]
    Syntax {
        /// The template's name.
        name: String,
        /// Where it came from (built in, an override's path, a given file).
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Rendering failed (an unknown variable or helper, a helper's error); the message
    /// names the template, the line and where the template came from.
    #[error("{0}")]
    Render(String),
    /// An override file could not be read.
    #[error("read template override {path}: {message}")]
    Read {
        /// The override file.
        path: PathBuf,
        /// The operating system's error.
        message: String,
    },
    /// No built-in template has this name.
    #[error("no template named {0:?} (see `templates/` for the names)")]
    Unknown(String),
}

/// The loaded templates (built-in, or their overrides) with the helpers registered.
pub struct Templates {
    hb: Handlebars<'static>,
    /// Where each template came from: "built in" or the override's path.
    pub origins: BTreeMap<String, String>,
}

impl Templates {
    /// Built-in templates, overridden by `<overrides>/<name>.hbs` where present; helpers
    /// resolve files relative to `cluster_dir`.
    pub fn load(cluster_dir: &Path, overrides: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        crate::helpers::register(&mut hb, cluster_dir);
        let mut origins = BTreeMap::new();
        for (name, text) in BUILTIN {
            let over = overrides
                .map(|d| d.join(format!("{name}.hbs")))
                .filter(|p| p.is_file());
            let (text, origin) = match &over {
                Some(p) => (
                    std::fs::read_to_string(p).map_err(|e| TemplateError::Read {
                        path: p.clone(),
                        message: e.to_string(),
                    })?,
                    p.display().to_string(),
                ),
                None => ((*text).to_owned(), "built in".to_owned()),
            };
            hb.register_template_string(name, text)
                .map_err(|e| TemplateError::Syntax {
                    name: name.to_string(),
                    origin: origin.clone(),
                    message: match e.pos() {
                        Some((line, col)) => format!("line {line}, column {col}: {}", e.reason()),
                        None => e.reason().to_string(),
                    },
                })?;
            origins.insert(name.to_string(), origin);
        }
        Ok(Templates { hb, origins })
    }

    /// Renders template text that is not registered (a file given on the command line),
    /// with the same helpers and strictness; `name` labels errors.
    pub fn render_source(
        &self,
        name: &str,
        source: &str,
        data: &impl Serialize,
    ) -> Result<String, TemplateError> {
        let mut hb = self.hb.clone();
        hb.register_template_string(name, source)
            .map_err(|e| TemplateError::Syntax {
                name: name.to_owned(),
                origin: "given file".into(),
                message: match e.pos() {
                    Some((line, col)) => format!("line {line}, column {col}: {}", e.reason()),
                    None => e.reason().to_string(),
                },
            })?;
        hb.render(name, data)
            .map_err(|e| TemplateError::Render(e.to_string()))
    }

    /// Renders with a prepared context (no serialization of the data per call).
    pub fn render_ctx(
        &self,
        name: &str,
        ctx: &handlebars::Context,
    ) -> Result<String, TemplateError> {
        if !self.origins.contains_key(name) {
            return Err(TemplateError::Unknown(name.to_owned()));
        }
        self.hb.render_with_context(name, ctx).map_err(|e| {
            TemplateError::Render(format!("{e} (template from {})", self.origins[name]))
        })
    }

    /// Renders template `name` with `data` as its context.
    pub fn render(&self, name: &str, data: &impl Serialize) -> Result<String, TemplateError> {
        if !self.origins.contains_key(name) {
            return Err(TemplateError::Unknown(name.to_owned()));
        }
        self.hb.render(name, data).map_err(|e| {
            TemplateError::Render(format!("{e} (template from {})", self.origins[name]))
        })
    }
}
