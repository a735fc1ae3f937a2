//! A Compute Engine "cloud" on this host: the Compute API stand-in ([`crate::gce_api`])
//! whose instances are real machines — local systemd-nspawn nodes (the local provider's
//! machinery) on a bridge that plays the subnetwork's gateway, booted with the `user-data`
//! of the instance's metadata at its `networkIP`. `pangaea-ctl` reaches it through gcloud's
//! own variables ([`GceCloud::ctl_env`]), exactly as it would reach Google.
//!
//! Used by the e2e test (tests/tests/e2e_gce.rs) and by `gce-stand-in` (for the benchmark
//! and for trying the GCE provider by hand).

use crate::gce_api::{GceApi, MachineEvent, PROJECT};
use pangaea_controller::provider::local::Local;
use pangaea_controller::provider::{NodeSpec, Provider};
use pangaea_controller::state_dir::StateDir;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// The region the cloud's callers are pointed at (its zones: `-a`, `-b`, `-c`, `-f`).
pub const REGION: &str = "us-central1";

/// The stand-in and its machines.
pub struct GceCloud {
    pub api: GceApi,
    /// The machines behind the instances.
    pub machines: Arc<Local>,
    /// The subnetwork's gateway: this host's address on the machines' bridge, where a
    /// controller is reached (`provider.advertiseAddress`).
    pub gateway: IpAddr,
    dir: tempfile::TempDir,
}

impl GceCloud {
    /// Starts the stand-in with machines named after `name` on the node network `cidr`,
    /// building the node image first if it is not cached.
    pub async fn start(name: &str, cidr: &str) -> GceCloud {
        let dir = tempfile::tempdir().unwrap();
        let machines = Arc::new(Local::new(
            name,
            pangaea_compiler::cidr::Cidr::parse(cidr).unwrap(),
            &StateDir::new(dir.path().join("cloud")),
            Path::new("/var/cache/pangaea/images"),
        ));
        machines.prepare(&|m| eprintln!("{m}")).await.unwrap();
        let gateway = machines.controller_endpoint().await.unwrap().advertise;
        std::fs::write(dir.path().join("token"), "ya29.stand-in-token\n").unwrap();
        let api = GceApi::start().await;
        let m = machines.clone();
        api.state.lock().unwrap().machines = Some(Arc::new(move |e: MachineEvent| {
            let m = m.clone();
            Box::pin(async move {
                if let Err(err) = carry_out(&m, &e).await {
                    eprintln!("stand-in machine {e:?}: {err}");
                }
            })
        }));
        GceCloud {
            api,
            machines,
            gateway,
            dir,
        }
    }

    /// The environment that points `pangaea-ctl` (or gcloud) at this cloud: gcloud's
    /// endpoint override, an access-token file, the project and the region.
    pub fn ctl_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE", self.api.base()),
            (
                "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE",
                self.dir.path().join("token").display().to_string(),
            ),
            ("CLOUDSDK_CORE_PROJECT", PROJECT.into()),
            ("CLOUDSDK_COMPUTE_REGION", REGION.into()),
            // `up` merges the admin kubeconfig here, not into the host's ~/.kube/config.
            ("KUBECONFIG", self.kubeconfig().display().to_string()),
            (
                "PANGAEA_HOST_STATE",
                self.dir.path().join("host").display().to_string(),
            ),
        ]
    }

    /// The operator's kubectl configuration (`KUBECONFIG` in [`Self::ctl_env`]), which `up`
    /// merges into: never the host's `~/.kube/config`.
    pub fn kubeconfig(&self) -> std::path::PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Where the machines' files are (their console logs under `nodes/`).
    pub fn machines_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("cloud")
    }

    /// Deletes every machine left and the bridge.
    pub async fn remove_all(&self) {
        for n in self.machines.list().await.unwrap_or_default() {
            let _ = self.machines.delete(&n.name).await;
        }
        let _ = self.machines.teardown().await;
    }
}

/// Does to the machine what happened to its instance.
async fn carry_out(
    m: &Local,
    e: &MachineEvent,
) -> Result<(), pangaea_controller::provider::ProviderError> {
    let node = |n: &str| n.parse().expect("instance names are node names");
    match e {
        MachineEvent::Create {
            name,
            address,
            user_data,
            ..
        } => {
            let address = address.ok_or_else(|| {
                pangaea_controller::provider::ProviderError::Failed(
                    "the stand-in's machines need the instance's networkIP".into(),
                )
            })?;
            m.create(&NodeSpec {
                name: node(name),
                address,
                user_data: user_data.clone(),
                memory_mib: 2048,
                cpus: 2,
            })
            .await
            .map(|_| ())
        }
        MachineEvent::Start(n) => m.start(&node(n)).await,
        MachineEvent::Stop(n) => m.stop(&node(n)).await,
        MachineEvent::Reset(n) => {
            Local::crash(m, &node(n)).await?;
            m.start(&node(n)).await
        }
        MachineEvent::Delete(n) => m.delete(&node(n)).await,
    }
}
