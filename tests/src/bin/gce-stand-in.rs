//! A Compute Engine stand-in whose instances boot as local nspawn nodes
//! ([`pangaea_tests::gce_cloud`]), serving until its standard input closes; then it deletes
//! the machines it still has and its bridge. For the benchmark (bench/up-per-provider.sh) and
//! for trying the GCE provider by hand. Needs root.
//!
//! `gce-stand-in NAME CIDR` prints, once ready, the environment for `pangaea-ctl` as `export`
//! lines, then `# advertiseAddress: ADDRESS` (the bridge's address, for `pangaea.yaml`).

use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, cidr] = args.as_slice() else {
        eprintln!("usage: gce-stand-in NAME CIDR   (serves until stdin closes)");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cloud = rt.block_on(pangaea_tests::gce_cloud::GceCloud::start(name, cidr));
    for (k, v) in cloud.ctl_env() {
        println!("export {k}={v}");
    }
    println!("# advertiseAddress: {}", cloud.gateway);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    rt.block_on(cloud.remove_all());
}
