//! Compile time of a whole cluster: every file of every node, rendered from the built-in
//! templates. `bench-compile NODES [RUNS]` (NODES = 3 gives the default cluster; larger
//! gives 3 etcd/control-plane nodes plus workers). Two figures: with deterministic stand-in
//! inputs (rendering alone), and with the controller's real PKI once its certificates are
//! issued (what `pangaea-ctl compile` costs on an existing cluster).

use pangaea_compiler::config::Loaded;
use pangaea_compiler::inputs::FakeInputs;
use pangaea_compiler::model::ClusterModel;
use pangaea_compiler::node::Compiler;
use pangaea_compiler::templates::Templates;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let nodes = args.first().copied().unwrap_or(3);
    let runs = args.get(1).copied().unwrap_or(10);
    let config = if nodes <= 3 {
        String::new()
    } else {
        format!(
            "pools:\n  - name: cp\n    count: 3\n    roles: [etcd, control-plane]\n  - name: worker\n    count: {}\n    roles: [worker]\n",
            nodes - 3
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    let mut fake = Vec::new();
    let mut files = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let loaded = Loaded::parse("pangaea.yaml", &config, dir.path()).unwrap();
        let model = ClusterModel::build(&loaded);
        let templates = Templates::load(dir.path(), None).unwrap();
        let artifacts = loaded.artifact_set();
        let out = Compiler {
            model: &model,
            templates: &templates,
            inputs: &FakeInputs,
            artifacts: &artifacts,
        }
        .compile_all()
        .unwrap();
        fake.push(t.elapsed().as_secs_f64() * 1e3);
        files = out.iter().map(|n| n.files.len()).sum();
    }

    let state = pangaea_controller::state_dir::StateDir::new(dir.path().join(".pangaea"));
    std::fs::write(dir.path().join("pangaea.yaml"), &config).unwrap();
    let load = || {
        pangaea_controller::compile::Compilation::load(&dir.path().join("pangaea.yaml"), &state)
            .unwrap()
    };
    let c = load();
    let t = Instant::now();
    for n in &c.model.nodes {
        c.compile_node(&n.name).unwrap();
    }
    let first = t.elapsed().as_secs_f64() * 1e3;
    let mut warm = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let c = load();
        for n in &c.model.nodes {
            c.compile_node(&n.name).unwrap();
        }
        warm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "nodes={nodes} files={files} render_only_ms={:.1} with_pki_warm_ms={:.1} with_pki_first_issue_ms={first:.0}",
        median(fake),
        median(warm)
    );
}
