//! Shared by the compiler's integration tests: compile a configuration with deterministic
//! inputs.

#![allow(dead_code)]

use pangaea_compiler::config::Loaded;
use pangaea_compiler::inputs::FakeInputs;
use pangaea_compiler::model::ClusterModel;
use pangaea_compiler::node::{Compiler, NodeOutput};
use pangaea_compiler::templates::Templates;
use std::path::Path;

pub fn compile(config: &str, dir: &Path) -> Vec<NodeOutput> {
    try_compile(config, dir, None).unwrap_or_else(|e| panic!("{e}"))
}

pub fn try_compile(
    config: &str,
    dir: &Path,
    overrides: Option<&Path>,
) -> Result<Vec<NodeOutput>, String> {
    let loaded = Loaded::parse("pangaea.yaml", config, dir).map_err(|e| e.to_string())?;
    let model = ClusterModel::build(&loaded);
    let templates = Templates::load(dir, overrides).map_err(|e| e.to_string())?;
    let artifacts = loaded.artifact_set();
    Compiler {
        model: &model,
        templates: &templates,
        inputs: &FakeInputs,
        artifacts: &artifacts,
    }
    .compile_all()
    .map_err(|e| e.to_string())
}

/// The configurations the tests exercise: the default cluster, separate pools with disks
/// and NFS, and everything optional switched on.
pub const CASES: [(&str, &str); 4] = [
    ("default", ""),
    (
        "pools",
        "name: split\nprovider:\n  type: gce\n  zones: [europe-west1-b, europe-west1-c, europe-west1-d]\npools:\n  - name: cp\n    count: 3\n    roles: [etcd, control-plane]\n    machineType: e2-small\n  - name: worker\n    count: 2\n    roles: [worker]\n    machineType: e2-medium\n    labels:\n      tier: apps\n    disks:\n      - name: data\n        sizeGiB: 20\n        mount: /var/lib/data\nnfs:\n  - server: 10.213.0.1\n    export: /srv/share\n    mount: /mnt/share\n",
    ),
    (
        "everything",
        "addons:\n  logging:\n    enabled: true\n    persistentStorage: true\n  monitoring:\n    enabled: true\n    externalAccess: true\nexpose:\n  grafana:\n    type: NodePort\n    nodePort: 30300\n",
    ),
    // containerd 1.x (as Debian 12 packages it): configuration version 2.
    (
        "containerd-1x",
        "artifacts:\n  - name: containerd\n    version: 1.6.20~ds1-1+deb12u3\n",
    ),
];
