//! The compiler wired to the controller: a [`Planner`] that renders each node's assignment
//! from `pangaea.yaml` and the cluster's PKI, and `pangaea-ctl compile`'s file output.

use crate::assign::{Plan, PlanError, Planner};
use crate::issued::PkiInputs;
use crate::pki::{Pki, PkiError};
use crate::records::NodeRecord;
use crate::state_dir::StateDir;
use pangaea_compiler::artifact_set::ArtifactSet;
use pangaea_compiler::config::{ConfigError, Loaded};
use pangaea_compiler::model::ClusterModel;
use pangaea_compiler::node::{CompileError, Compiler, NodeOutput};
use pangaea_compiler::roles::Role;
use pangaea_compiler::templates::{TemplateError, Templates};
use pangaea_core::NodeName;
use pangaea_proto as pb;
use std::path::{Path, PathBuf};

/// Why the cluster could not be loaded, compiled or written out.
#[derive(Debug, thiserror::Error)]
pub enum CompileSetupError {
    /// `pangaea.yaml` could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A template (built-in or override) could not be loaded.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The PKI could not be loaded or created.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Compiling failed: unknown node, a template that does not render, a certificate
    /// that cannot be issued.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The compiler's inputs could not be prepared: a PKI key unreadable, or a generated
    /// cluster secret not stored.
    #[error(transparent)]
    Inputs(#[from] crate::issued::InputsError),
    /// `artifactSource: os-packages`, and the installed packages could not be imported.
    #[error(transparent)]
    OsPackages(#[from] crate::os_packages::OsPackagesError),
    /// The recorded external API address is unreadable.
    #[error(transparent)]
    ApiAddress(#[from] crate::api_address::ApiAddressError),
    /// `compile` could not write an output file.
    #[error("write {path}: {message}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The I/O error's text.
        message: String,
    },
}

/// Everything needed to compile a cluster, loaded once.
pub struct Compilation {
    /// The configuration file as loaded (its path, directory and parsed content).
    pub loaded: Loaded,
    /// The cluster built from the configuration: nodes, roles, addresses.
    pub model: ClusterModel,
    /// Built-in templates with the configuration's overrides applied.
    pub templates: Templates,
    /// The artifact set nodes install: the pinned set, or the installed OS packages'
    /// binaries (`artifactSource: os-packages`), with the configuration's overrides.
    pub artifacts: ArtifactSet,
    /// With `artifactSource: os-packages`: what was imported from which package, and what
    /// is unavailable.
    pub os_packages: Option<crate::os_packages::Import>,
    /// The cluster's PKI (created on first use).
    pub pki: Pki,
    /// The cluster's `.pangaea/` directory.
    pub state_dir: StateDir,
    /// Lifetime of the leaf certificates issued for nodes.
    pub leaf_lifetime: std::time::Duration,
}

impl Compilation {
    /// Loads `config` (a missing file means defaults), its template overrides and the PKI.
    pub fn load(config: &Path, state_dir: &StateDir) -> Result<Compilation, CompileSetupError> {
        let loaded = Loaded::load(config)?;
        let overrides = loaded.dir.join(&loaded.config.templates_dir);
        let templates = Templates::load(&loaded.dir, Some(&overrides))?;
        let mut model = ClusterModel::build(&loaded);
        model.api_external = crate::api_address::load(state_dir)?;
        state_dir.ensure().map_err(|e| CompileSetupError::Write {
            path: state_dir.path().to_owned(),
            message: e.to_string(),
        })?;
        let (artifacts, os_packages) = crate::os_packages::resolve(&loaded, state_dir)?;
        let pki = Pki::load_or_create(&state_dir.pki())?;
        Ok(Compilation {
            loaded,
            model,
            templates,
            artifacts,
            os_packages,
            pki,
            state_dir: state_dir.clone(),
            leaf_lifetime: crate::issued::LEAF_LIFETIME,
        })
    }

    /// Compiles one node.
    pub fn compile_node(&self, name: &str) -> Result<NodeOutput, CompileSetupError> {
        self.with_compiler(|c| c.compile_node(name))
    }

    /// The operator's admin kubeconfig, reaching the API at `server`.
    pub fn operator_kubeconfig(&self, server: &str) -> Result<String, CompileSetupError> {
        self.with_compiler(|c| c.operator_kubeconfig(server))
    }

    /// The API servers (`ADDRESS:PORT` of every control-plane node), as the load balancers
    /// relay to them.
    pub fn api_servers(&self) -> Vec<std::net::SocketAddr> {
        self.model
            .with_role(Role::ControlPlane)
            .map(|n| std::net::SocketAddr::from((n.address, pangaea_compiler::node::API_PORT)))
            .collect()
    }

    /// Runs `f` with a compiler over this cluster and its PKI.
    pub fn with_compiler<T>(
        &self,
        f: impl FnOnce(&Compiler) -> Result<T, CompileError>,
    ) -> Result<T, CompileSetupError> {
        let inputs = PkiInputs::new(&self.pki, &self.state_dir)?.with_lifetime(self.leaf_lifetime);
        Ok(f(&Compiler {
            model: &self.model,
            templates: &self.templates,
            inputs: &inputs,
            artifacts: &self.artifacts,
        })?)
    }
}

/// Converts compiler output into an assignment plan.
pub fn to_plan(out: NodeOutput) -> Plan {
    Plan {
        files: out
            .files
            .into_iter()
            .map(|f| pb::File {
                path: f.path,
                mode: f.mode,
                owner: String::new(),
                content: f.content.into_bytes(),
            })
            .collect(),
        artifacts: out
            .artifacts
            .into_iter()
            .map(|a| pb::Artifact {
                url: a.url,
                digest: a.digest,
                dest: a.dest,
                mode: a.mode,
                members: a
                    .members
                    .into_iter()
                    .map(|m| pb::ArchiveMember {
                        path: m.path,
                        dest: m.dest,
                        mode: m.mode,
                    })
                    .collect(),
            })
            .collect(),
        units: out
            .units
            .into_iter()
            .map(|u| pb::Unit {
                name: u.name,
                enable: u.enable,
                restart_on_change: u.restart_on_change,
            })
            .collect(),
    }
}

/// Plans nodes by compiling the cluster configuration; [`Planner::reload`] compiles it
/// again from the file, so the running controller follows `pangaea.yaml` and the cluster
/// state (`node add`, an edited template).
pub struct CompilerPlanner {
    config: PathBuf,
    current: std::sync::RwLock<std::sync::Arc<Compilation>>,
}

impl CompilerPlanner {
    /// A planner over `compilation`, loaded from the configuration file `config`.
    pub fn new(config: &Path, compilation: Compilation) -> CompilerPlanner {
        CompilerPlanner {
            config: config.to_owned(),
            current: std::sync::RwLock::new(std::sync::Arc::new(compilation)),
        }
    }

    /// The compilation in use.
    pub fn current(&self) -> std::sync::Arc<Compilation> {
        // A writer only swaps an Arc: a poisoned lock still holds a whole value.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Planner for CompilerPlanner {
    fn roles(&self, node: &NodeName) -> Vec<Role> {
        self.current()
            .model
            .node(node.as_str())
            .map(|n| n.roles.clone())
            .unwrap_or_default()
    }

    fn plan(&self, node: &NodeRecord) -> Result<Plan, PlanError> {
        let c = self.current();
        c.compile_node(&node.name)
            .map(to_plan)
            .map_err(|e| PlanError {
                node: node.name.to_string(),
                message: match e {
                    CompileSetupError::Compile(CompileError::NoSuchNode(_)) => format!(
                        "node {:?} is not in the cluster configuration ({})",
                        node.name, c.loaded.file
                    ),
                    e => e.to_string(),
                },
            })
    }

    fn reload(&self) -> Result<(), String> {
        let old = self.current();
        let mut new = Compilation::load(&self.config, &old.state_dir).map_err(|e| e.to_string())?;
        new.leaf_lifetime = old.leaf_lifetime;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(new);
        Ok(())
    }
}

/// Writes `content` to `path` (atomically) unless the file holds it already; whether it
/// wrote.
pub fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<bool, CompileSetupError> {
    let changed = std::fs::read(path).map(|c| c != content).unwrap_or(true);
    if changed {
        pangaea_core::fsutil::atomic_write(path, content, mode).map_err(|e| {
            CompileSetupError::Write {
                path: path.to_owned(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(changed)
}

/// Writes `out` under `dir/<node>/` (file paths kept), plus `artifacts.json` and
/// `units.json`. Only changed files are rewritten. Returns each path with whether it changed.
pub fn write_node(dir: &Path, out: &NodeOutput) -> Result<Vec<(PathBuf, bool)>, CompileSetupError> {
    let base = dir.join(&out.node);
    let mut written = Vec::new();
    let mut put = |rel: &str, content: &[u8], mode: u32| -> Result<(), CompileSetupError> {
        let path = base.join(rel.trim_start_matches('/'));
        let changed = write_if_changed(&path, content, mode)?;
        written.push((path, changed));
        Ok(())
    };
    for f in &out.files {
        put(&f.path, f.content.as_bytes(), f.mode)?;
    }
    put(
        "artifacts.json",
        serde_json::to_string_pretty(&out.artifacts)
            .expect("json")
            .as_bytes(),
        0o644,
    )?;
    put(
        "units.json",
        serde_json::to_string_pretty(&out.units)
            .expect("json")
            .as_bytes(),
        0o644,
    )?;
    Ok(written)
}
