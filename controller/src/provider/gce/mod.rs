//! Google Compute Engine: the provider ([`cluster`]), the Compute API client it uses
//! ([`compute`]), and the gcloud settings both honour ([`GcloudEnv`]). The client is tested
//! against a Compute API stand-in that the real gcloud CLI drives (tests/tests/gce_api.rs);
//! the provider by `up` against that stand-in, whose instances boot as local nodes
//! (tests/tests/e2e_gce.rs).

pub mod cluster;
pub mod compute;
pub mod service_account;

use crate::provider::ProviderError;
use pangaea_compiler::config::Loaded;
use pangaea_compiler::provider::{Provider as ProviderConfig, gce};

use std::path::PathBuf;

/// The Compute API's base URL, when gcloud's override does not replace it.
pub const COMPUTE_BASE: &str = "https://compute.googleapis.com/compute/v1/";

/// The gcloud settings Pangaea honours, exactly as gcloud reads them, so that any endpoint
/// gcloud can be pointed at (a test stand-in included) serves Pangaea too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcloudEnv {
    /// `CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE`: the Compute API's base URL
    /// (`…/compute/v1/`).
    pub compute_base: Option<String>,
    /// `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE`: a file holding an access token.
    pub access_token_file: Option<PathBuf>,
    /// `CLOUDSDK_CORE_PROJECT`.
    pub project: Option<String>,
    /// `CLOUDSDK_COMPUTE_REGION`.
    pub region: Option<String>,
    /// `CLOUDSDK_COMPUTE_ZONE`.
    pub zone: Option<String>,
    /// `GOOGLE_APPLICATION_CREDENTIALS`: a service-account key file (Google's application
    /// default credentials).
    pub credentials_file: Option<PathBuf>,
}

impl GcloudEnv {
    /// The settings of this process's environment.
    pub fn from_env() -> GcloudEnv {
        GcloudEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// The settings `var` gives (empty values count as unset, as in gcloud).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> GcloudEnv {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        GcloudEnv {
            compute_base: get("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE"),
            access_token_file: get("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE").map(PathBuf::from),
            project: get("CLOUDSDK_CORE_PROJECT"),
            region: get("CLOUDSDK_COMPUTE_REGION"),
            zone: get("CLOUDSDK_COMPUTE_ZONE"),
            credentials_file: get("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from),
        }
    }

    /// The Compute API base URL to use, ending in `/`.
    pub fn compute_base(&self) -> String {
        let b = self.compute_base.as_deref().unwrap_or(COMPUTE_BASE);
        if b.ends_with('/') {
            b.to_owned()
        } else {
            format!("{b}/")
        }
    }

    /// Where the access token comes from: the token file when set (as in gcloud, it wins),
    /// else the service-account key of `GOOGLE_APPLICATION_CREDENTIALS`, else the installed
    /// gcloud CLI (`gcloud auth print-access-token`).
    pub fn token_source(&self) -> Result<compute::TokenSource, compute::ComputeError> {
        Ok(match (&self.access_token_file, &self.credentials_file) {
            (Some(f), _) => compute::TokenSource::File(f.clone()),
            (None, Some(key)) => compute::TokenSource::ServiceAccount(std::sync::Arc::new(
                service_account::ServiceAccount::from_file(key)?,
            )),
            (None, None) => compute::TokenSource::Gcloud,
        })
    }
}

/// The GCE provider of `loaded`'s cluster: project, region and zones from `pangaea.yaml`,
/// else from gcloud's settings (`env`, then `gcloud config`).
pub fn provider(loaded: &Loaded, env: &GcloudEnv) -> Result<cluster::Gce, ProviderError> {
    let config = &loaded.config;
    let ProviderConfig::Gce(g) = &config.provider else {
        return Err(ProviderError::Failed("not a GCE cluster".into()));
    };
    let project = project(g, env).ok_or_else(|| {
            ProviderError::Prerequisite(
                "no GCE project: set provider.project in pangaea.yaml, CLOUDSDK_CORE_PROJECT, or `gcloud config set project ID`".into(),
            )
        })?;
    let region = region(g, env).ok_or_else(|| {
            ProviderError::Prerequisite(
                "no GCE region: set provider.zones in pangaea.yaml, CLOUDSDK_COMPUTE_REGION, or `gcloud config set compute/region REGION`".into(),
            )
        })?;
    if let Some(z) = g.zones.iter().find(|z| gce::region_of(z) != region) {
        return Err(ProviderError::Prerequisite(format!(
            "provider.zones: {z} is not in {region}, the region of the first zone; a cluster's nodes share one region (one subnetwork)"
        )));
    }
    let advertise = match &g.advertise_address {
        None => None,
        Some(a) => Some(a.parse().map_err(|e| {
            ProviderError::Prerequisite(format!(
                "provider.advertiseAddress {a:?} is not an IP address: {e}"
            ))
        })?),
    };
    let model = pangaea_compiler::model::ClusterModel::build(loaded);
    let nodes = model
        .nodes
        .iter()
        .map(|n| {
            let pool = config.pools.iter().find(|p| p.name == n.pool);
            let planned = cluster::PlannedNode {
                position: n.position,
                zone: n.zone.clone(),
                machine_type: gce::machine_type(pool.and_then(|p| p.machine_type.as_deref()))
                    .to_owned(),
                disks: n
                    .disks
                    .iter()
                    .map(|d| compute::DataDisk {
                        name: cluster::data_disk_name(&config.name, &n.name, &d.config.name),
                        device_name: d.config.name.clone(),
                        size_gib: d.config.size_gib,
                        disk_type: gce::DISK_TYPE.into(),
                    })
                    .collect(),
            };
            (n.name.clone(), planned)
        })
        .collect();
    let token = env
        .token_source()
        .map_err(|e| ProviderError::Prerequisite(e.to_string()))?;
    Ok(cluster::Gce::new(
        compute::Compute::new(&env.compute_base(), &project, token),
        cluster::GceCluster {
            cluster: config.name.clone(),
            region,
            zones: g.zones.clone(),
            spot: g.spot,
            advertise,
            node_cidr: config.network.nodes,
            api_port: pangaea_compiler::node::API_PORT,
            api_access: g.api_access.as_ref().map_or_else(
                || vec!["0.0.0.0/0".to_owned()],
                |a| a.iter().map(ToString::to_string).collect(),
            ),
            node_ports: config
                .expose
                .values()
                .filter(|e| e.kind == pangaea_compiler::expose::ExposeType::NodePort)
                .filter_map(|e| e.node_port)
                .collect(),
            api_address: g.static_api_address().then(|| cluster::StaticApiAddress {
                name: cluster::api_address_name(&config.name),
                node: model.api_node().name.clone(),
            }),
            nodes,
        },
    ))
}

/// The project of a GCE cluster: `provider.project`, else gcloud's (`CLOUDSDK_CORE_PROJECT`,
/// then `gcloud config get project`); `None` when nothing says.
pub fn project(g: &pangaea_compiler::provider::GceProvider, env: &GcloudEnv) -> Option<String> {
    g.project
        .clone()
        .or_else(|| env.project.clone())
        .or_else(|| gcloud_config("project"))
}

/// The region of a GCE cluster: its first zone's, else gcloud's (`CLOUDSDK_COMPUTE_REGION`,
/// the region of `CLOUDSDK_COMPUTE_ZONE`, then `gcloud config get`); `None` when nothing
/// says.
pub fn region(g: &pangaea_compiler::provider::GceProvider, env: &GcloudEnv) -> Option<String> {
    g.zones
        .first()
        .map(|z| gce::region_of(z).to_owned())
        .or_else(|| env.region.clone())
        .or_else(|| env.zone.as_deref().map(|z| gce::region_of(z).to_owned()))
        .or_else(|| gcloud_config("compute/region"))
        .or_else(|| gcloud_config("compute/zone").map(|z| gce::region_of(&z).to_owned()))
}

/// The zone of a GCE cluster for gcloud's default: its first zone (node-1's), else gcloud's
/// own (`CLOUDSDK_COMPUTE_ZONE`, then `gcloud config get compute/zone`).
pub fn zone(g: &pangaea_compiler::provider::GceProvider, env: &GcloudEnv) -> Option<String> {
    g.zones
        .first()
        .cloned()
        .or_else(|| env.zone.clone())
        .or_else(|| gcloud_config("compute/zone"))
}

/// A value of gcloud's configuration (`gcloud config get KEY`), `None` when it is unset or
/// gcloud is not installed.
fn gcloud_config(key: &str) -> Option<String> {
    let out = std::process::Command::new("gcloud")
        .args(["config", "get", key])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gclouds_variables_and_ignores_empty_ones() {
        let e = GcloudEnv::from_vars(|k| match k {
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE" => {
                Some("http://127.0.0.1:9/compute/v1".into())
            }
            "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE" => Some("/t".into()),
            "CLOUDSDK_CORE_PROJECT" => Some("demo".into()),
            "CLOUDSDK_COMPUTE_ZONE" => Some(" ".into()),
            _ => None,
        });
        assert_eq!(e.compute_base(), "http://127.0.0.1:9/compute/v1/");
        assert_eq!(e.project.as_deref(), Some("demo"));
        assert_eq!(e.zone, None);
        assert!(matches!(
            e.token_source().unwrap(),
            compute::TokenSource::File(_)
        ));
        let none = GcloudEnv::from_vars(|_| None);
        assert_eq!(none.compute_base(), COMPUTE_BASE);
        assert!(matches!(
            none.token_source().unwrap(),
            compute::TokenSource::Gcloud
        ));
        let bad = GcloudEnv::from_vars(|k| {
            (k == "GOOGLE_APPLICATION_CREDENTIALS").then(|| "/nonexistent/key.json".into())
        });
        let e = bad.token_source().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/key.json"), "{e}");
    }
}
