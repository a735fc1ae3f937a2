//! The add-on manifests, rendered through the public API for several configurations, each
//! checked by `kubernetes-validate --strict` against the Kubernetes API schemas and for the
//! values that matter (DNS IP, pod network, service exposure, credentials, secret contents).
//!
//! Needs `kubernetes-validate` on the PATH (`pip install kubernetes-validate`); without it the
//! tests fail rather than skip.

use base64::Engine;
use pangaea_compiler::config::Loaded;
use pangaea_compiler::inputs::FakeInputs;
use pangaea_compiler::model::ClusterModel;
use pangaea_compiler::node::Compiler;
use pangaea_compiler::templates::Templates;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The newest Kubernetes version ≤ the clusters' v1.35 whose schemas the validator ships.
const SCHEMA_VERSION: &str = "1.35.0";
const VALIDATOR: &str = "kubernetes-validate";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The add-on manifests node-1 gets, by add-on name (`/etc/kubernetes/addons/02-coredns.yaml`
/// → `coredns`).
fn addons(config: &str, cluster_dir: &Path) -> BTreeMap<String, String> {
    let loaded = Loaded::parse("pangaea.yaml", config, cluster_dir)
        .unwrap_or_else(|e| panic!("config does not load: {e}\n{config}"));
    let model = ClusterModel::build(&loaded);
    let templates = Templates::load(cluster_dir, None).expect("templates load");
    let artifacts = loaded.artifact_set();
    let out = Compiler {
        model: &model,
        templates: &templates,
        inputs: &FakeInputs,
        artifacts: &artifacts,
    }
    .compile_node("node-1")
    .unwrap_or_else(|e| panic!("node-1 does not compile: {e}\n{config}"));
    let mut found = BTreeMap::new();
    for f in out.files {
        if let Some(file) = f.path.strip_prefix("/etc/kubernetes/addons/") {
            let name = file
                .split_once('-')
                .map(|(_, rest)| rest)
                .unwrap_or(file)
                .trim_end_matches(".yaml")
                .to_owned();
            assert_eq!(f.mode, 0o600, "{}", f.path);
            found.insert(name, f.content);
        }
    }
    found
}

fn names(a: &BTreeMap<String, String>) -> Vec<&str> {
    a.keys().map(String::as_str).collect()
}

/// Every non-empty YAML document of a manifest, as JSON.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| {
            Value::deserialize(d)
                .unwrap_or_else(|e| panic!("manifest is not YAML: {e}\n{}", numbered(text)))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:4} {l}\n", i + 1))
        .collect()
}

/// Runs the validator on `text`; returns (success, combined output).
fn run_validator(label: &str, text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(format!("{label}.yaml"));
    std::fs::write(&file, text).expect("write manifest");
    let out = match Command::new(VALIDATOR)
        .args(["--strict", "-k", SCHEMA_VERSION])
        .arg(&file)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("kubernetes-validate not found: pip install kubernetes-validate")
        }
        Err(e) => panic!("cannot run {VALIDATOR}: {e}"),
    };
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), output)
}

/// Validates a manifest strictly: the tool must succeed, warn about nothing (an unknown kind
/// is only a warning to it) and report one pass per document.
fn validate(label: &str, text: &str) -> Vec<Value> {
    let docs = documents(text);
    assert!(!docs.is_empty(), "{label}: no documents\n{text}");
    let (ok, output) = run_validator(label, text);
    let passed = output.matches(" passed for resource ").count();
    let clean = ok && !output.contains("ERROR") && !output.contains("WARN") && passed == docs.len();
    assert!(
        clean,
        "{label}: {VALIDATOR} --strict -k {SCHEMA_VERSION} failed ({passed} of {} documents passed):\n{output}\nmanifest:\n{}",
        docs.len(),
        numbered(text)
    );
    for d in &docs {
        check_images(label, d);
    }
    docs
}

fn validate_all(a: &BTreeMap<String, String>) -> BTreeMap<String, Vec<Value>> {
    a.iter()
        .map(|(name, text)| (name.clone(), validate(name, text)))
        .collect()
}

/// Every container image is pinned: a registry path with an explicit tag, never `latest`.
fn check_images(label: &str, v: &Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "image" {
                    let image = x.as_str().unwrap_or_default();
                    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
                    assert!(
                        !tag.is_empty() && !tag.contains('/') && tag != "latest",
                        "{label}: image {image:?} is not pinned by tag"
                    );
                } else {
                    check_images(label, x);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| check_images(label, x)),
        _ => {}
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn volume<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn args(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

#[test]
fn the_validator_really_runs_and_rejects_a_broken_manifest() {
    let broken = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: \"two\"\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n          image: docker.io/library/nginx:1.27.3\n";
    let (ok, output) = run_validator("broken", broken);
    assert!(!ok, "a Deployment with replicas: \"two\" passed:\n{output}");
    assert!(output.contains("replicas"), "{output}");
    let unknown_field = broken.replace("replicas: \"two\"", "replicas: 2").replace(
        "image: ",
        "imagePullPolicy: Always\n          bogus: 1\n          image: ",
    );
    let (ok, output) = run_validator("unknown-field", &unknown_field);
    assert!(!ok, "--strict let an unknown field through:\n{output}");
    let good = broken.replace("replicas: \"two\"", "replicas: 2");
    let (ok, output) = run_validator("good", &good);
    assert!(ok && output.contains(" passed for resource "), "{output}");
}

#[test]
fn defaults_give_flannel_coredns_and_metrics_server() {
    let dir = tempfile::tempdir().unwrap();
    let a = addons("", dir.path());
    assert_eq!(names(&a), ["coredns", "flannel", "metrics-server"]);
    let docs = validate_all(&a);

    let flannel = &docs["flannel"];
    let cm = find(flannel, "ConfigMap", "kube-flannel-cfg");
    let net: Value = serde_json::from_str(str_of(&cm["data"]["net-conf.json"], "net-conf.json"))
        .expect("net-conf.json is JSON");
    assert_eq!(net["Network"], "10.244.0.0/16");
    assert_eq!(net["Backend"]["Type"], "vxlan");
    let cni: Value = serde_json::from_str(str_of(&cm["data"]["cni-conf.json"], "cni-conf.json"))
        .expect("cni-conf.json is JSON");
    assert_eq!(cni["plugins"][0]["type"], "flannel");
    let ds = find(flannel, "DaemonSet", "kube-flannel-ds");
    let main = container(ds, "kube-flannel");
    assert!(str_of(&main["image"], "image").starts_with("docker.io/flannel/flannel:v0.27."));
    assert!(
        args(main).contains(&"--iface-can-reach=10.213.0.1"),
        "{:?}",
        args(main)
    );
    let init = &pod_spec(ds)["initContainers"];
    assert!(
        init.as_array().unwrap().iter().any(|c| c["image"]
            .as_str()
            .unwrap()
            .starts_with("docker.io/flannel/flannel-cni-plugin:")
            && args(c).contains(&"/opt/cni/bin/flannel")),
        "{init}"
    );
    assert!(
        init.as_array()
            .unwrap()
            .iter()
            .any(|c| args(c).contains(&"/etc/cni/net.d/10-flannel.conflist")),
        "{init}"
    );

    let dns = &docs["coredns"];
    let svc = find(dns, "Service", "kube-dns");
    assert_eq!(svc["metadata"]["namespace"], "kube-system");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
    let ports: Vec<(i64, &str)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_i64().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(ports, [(53, "UDP"), (53, "TCP"), (9153, "TCP")]);
    let corefile = str_of(
        &find(dns, "ConfigMap", "coredns")["data"]["Corefile"],
        "Corefile",
    );
    assert!(
        corefile.contains("kubernetes cluster.local in-addr.arpa ip6.arpa"),
        "{corefile}"
    );
    assert!(
        corefile.contains("forward . /etc/resolv.conf"),
        "{corefile}"
    );
    assert!(corefile.contains("cache 30"), "{corefile}");
    let deploy = find(dns, "Deployment", "coredns");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let c = container(deploy, "coredns");
    assert!(str_of(&c["image"], "image").starts_with("registry.k8s.io/coredns/coredns:v1.12."));
    assert_eq!(c["resources"]["limits"]["memory"], "170Mi");
    let anti = &pod_spec(deploy)["affinity"]["podAntiAffinity"];
    assert_eq!(
        anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );

    let ms = &docs["metrics-server"];
    let api = find(ms, "APIService", "v1beta1.metrics.k8s.io");
    assert_eq!(api["spec"]["service"]["name"], "metrics-server");
    find(ms, "ClusterRole", "system:aggregated-metrics-reader");
    let rb = find(ms, "RoleBinding", "metrics-server-auth-reader");
    assert_eq!(
        rb["roleRef"]["name"],
        "extension-apiserver-authentication-reader"
    );
    find(ms, "Service", "metrics-server");
    let c = container(find(ms, "Deployment", "metrics-server"), "metrics-server");
    assert!(
        args(c).contains(&"--kubelet-preferred-address-types=InternalIP"),
        "{:?}",
        args(c)
    );
}

#[test]
fn network_settings_reach_flannel_and_coredns() {
    let dir = tempfile::tempdir().unwrap();
    let a = addons(
        "network:\n  nodes: 192.168.50.0/24\n  pods: 10.200.0.0/16\n  services: 10.100.0.0/16\n  clusterDomain: corp.internal\naddons:\n  metricsServer: false\n",
        dir.path(),
    );
    assert_eq!(names(&a), ["coredns", "flannel"]);
    let docs = validate_all(&a);
    let cm = find(&docs["flannel"], "ConfigMap", "kube-flannel-cfg");
    let net: Value =
        serde_json::from_str(str_of(&cm["data"]["net-conf.json"], "net-conf")).unwrap();
    assert_eq!(net["Network"], "10.200.0.0/16");
    let main = container(
        find(&docs["flannel"], "DaemonSet", "kube-flannel-ds"),
        "kube-flannel",
    );
    assert!(args(main).contains(&"--iface-can-reach=192.168.50.1"));
    assert_eq!(
        find(&docs["coredns"], "Service", "kube-dns")["spec"]["clusterIP"],
        "10.100.0.10"
    );
    let corefile = find(&docs["coredns"], "ConfigMap", "coredns")["data"]["Corefile"]
        .as_str()
        .unwrap();
    assert!(
        corefile.contains("kubernetes corp.internal in-addr.arpa"),
        "{corefile}"
    );
}

fn fluent_bit(docs: &[Value]) -> &Value {
    find(docs, "DaemonSet", "fluent-bit")
}

#[test]
fn logging_with_and_without_persistent_storage() {
    let dir = tempfile::tempdir().unwrap();
    let persistent = addons(
        "addons:\n  logging:\n    enabled: true\n    persistentStorage: true\n",
        dir.path(),
    );
    assert_eq!(
        names(&persistent),
        ["coredns", "flannel", "logging", "metrics-server"]
    );
    let docs = validate("logging-persistent", &persistent["logging"]);
    let ds = fluent_bit(&docs);
    assert_eq!(ds["metadata"]["namespace"], "logging");
    assert_eq!(
        volume(ds, "storage")["hostPath"]["path"],
        "/var/lib/fluent-bit"
    );
    assert!(volume(ds, "storage").get("emptyDir").is_none());
    assert_eq!(
        volume(ds, "output")["hostPath"]["path"],
        "/var/log/fluent-bit"
    );
    let conf = str_of(
        &find(&docs, "ConfigMap", "fluent-bit")["data"]["fluent-bit.conf"],
        "fluent-bit.conf",
    );
    for needle in [
        "Path                              /var/log/containers/*.log",
        "Name                              kubernetes",
        "Name                              file",
        "Mem_Buf_Limit",
        "storage.total_limit_size",
        "storage.path                      /var/lib/fluent-bit/buffer",
    ] {
        assert!(conf.contains(needle), "{needle:?} missing:\n{conf}");
    }
    let rotate = str_of(
        &find(&docs, "ConfigMap", "fluent-bit")["data"]["rotate.sh"],
        "rotate.sh",
    );
    assert!(
        rotate.contains("max_bytes=$((10 * 1024 * 1024))"),
        "{rotate}"
    );
    container(ds, "rotate");
    find(&docs, "ClusterRole", "pangaea:fluent-bit");

    let ephemeral = addons("addons:\n  logging:\n    enabled: true\n", dir.path());
    let docs = validate("logging-ephemeral", &ephemeral["logging"]);
    let ds = fluent_bit(&docs);
    for v in ["storage", "output"] {
        assert!(volume(ds, v).get("hostPath").is_none(), "{v}");
        assert!(volume(ds, v)["emptyDir"]["sizeLimit"].is_string(), "{v}");
    }
    // The node's container logs are read in both cases.
    assert_eq!(
        volume(ds, "varlogpods")["hostPath"]["path"],
        "/var/log/pods"
    );
}

fn service<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    let s = find(docs, "Service", name);
    assert_eq!(s["metadata"]["namespace"], "monitoring");
    &s["spec"]
}

#[test]
fn monitoring_with_exposed_services() {
    let dir = tempfile::tempdir().unwrap();
    let config = "addons:\n  monitoring:\n    enabled: true\nexpose:\n  grafana:\n    type: NodePort\n    nodePort: 30300\n  prometheus:\n    type: LoadBalancer\n    loadBalancerIP: 10.0.0.50\n";
    // `loadBalancerIP` is the documented spelling (and Kubernetes'); config.rs derives the key
    // from `load_balancer_ip` with camelCase, which gives `loadBalancerIp`. Accept whichever
    // the configuration parser takes, so this test is about the manifests.
    let config = match Loaded::parse("pangaea.yaml", config, dir.path()) {
        Err(e) if e.message.contains("unknown field `loadBalancerIP`") => {
            config.replace("loadBalancerIP", "loadBalancerIp")
        }
        _ => config.to_owned(),
    };
    let a = addons(&config, dir.path());
    assert_eq!(
        names(&a),
        ["coredns", "flannel", "metrics-server", "monitoring"]
    );
    let docs = validate("monitoring-exposed", &a["monitoring"]);

    let grafana = service(&docs, "grafana");
    assert_eq!(grafana["type"], "NodePort");
    assert_eq!(grafana["ports"][0]["nodePort"], 30300);
    assert!(grafana.get("loadBalancerIP").is_none());
    let prometheus = service(&docs, "prometheus");
    assert_eq!(prometheus["type"], "LoadBalancer");
    assert_eq!(prometheus["loadBalancerIP"], "10.0.0.50");
    assert!(prometheus["ports"][0].get("nodePort").is_none());

    // node-exporter on every node, behind a headless service.
    let ne = find(&docs, "DaemonSet", "node-exporter");
    assert_eq!(pod_spec(ne)["hostNetwork"], true);
    assert_eq!(service(&docs, "node-exporter")["clusterIP"], "None");

    // Prometheus: RBAC, scrape configuration, emptyDir.
    let role = find(&docs, "ClusterRole", "pangaea:prometheus");
    let rules = role["rules"].to_string();
    for r in ["nodes", "services", "endpoints", "pods", "/metrics"] {
        assert!(rules.contains(&format!("\"{r}\"")), "{r} missing: {rules}");
    }
    let prom_yml = str_of(
        &find(&docs, "ConfigMap", "prometheus")["data"]["prometheus.yml"],
        "prometheus.yml",
    );
    let prom: Value = serde_norway::from_str(prom_yml).expect("prometheus.yml is YAML");
    let jobs: Vec<&str> = prom["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    assert!(
        jobs.contains(&"node-exporter") && jobs.contains(&"cadvisor"),
        "{jobs:?}"
    );
    assert!(
        prom_yml.contains("/api/v1/nodes/$1/proxy/metrics/cadvisor")
            && prom_yml.contains("kubernetes.default.svc:443"),
        "{prom_yml}"
    );
    assert_eq!(prom["global"]["external_labels"]["cluster"], "pangaea");
    let p = find(&docs, "Deployment", "prometheus");
    assert!(volume(p, "data")["emptyDir"].is_object());

    // Grafana: provisioned data source and dashboard.
    let prov = &find(&docs, "ConfigMap", "grafana-provisioning")["data"];
    let ds: Value = serde_norway::from_str(str_of(&prov["datasources.yaml"], "datasources"))
        .expect("datasources.yaml is YAML");
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert_eq!(
        ds["datasources"][0]["url"],
        "http://prometheus.monitoring.svc.cluster.local:9090"
    );
    let dash_json = str_of(
        &find(&docs, "ConfigMap", "grafana-dashboards")["data"]["nodes.json"],
        "nodes.json",
    );
    let dash: Value = serde_json::from_str(dash_json).expect("the dashboard is JSON");
    let exprs: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(
        exprs.iter().any(|e| e.contains("node_cpu_seconds_total")),
        "{exprs:?}"
    );
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("node_memory_MemAvailable_bytes")),
        "{exprs:?}"
    );
    assert_eq!(dash["panels"][0]["targets"][0]["legendFormat"], "{{node}}");
    find(&docs, "Deployment", "grafana");
}

#[test]
fn monitoring_external_access_on_gce_is_a_load_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let a = addons(
        "provider:\n  type: gce\naddons:\n  monitoring:\n    enabled: true\n    externalAccess: true\n",
        dir.path(),
    );
    let docs = validate("monitoring-gce", &a["monitoring"]);
    let grafana = service(&docs, "grafana");
    assert_eq!(grafana["type"], "LoadBalancer");
    assert!(grafana.get("loadBalancerIP").is_none());
    assert!(grafana["ports"][0].get("nodePort").is_none());
    assert_eq!(service(&docs, "prometheus")["type"], "ClusterIP");

    // Locally there is no load balancer: external access alone leaves it a ClusterIP.
    let a = addons(
        "addons:\n  monitoring:\n    enabled: true\n    externalAccess: true\n",
        dir.path(),
    );
    let docs = validate("monitoring-local", &a["monitoring"]);
    assert_eq!(service(&docs, "grafana")["type"], "ClusterIP");
}

#[test]
fn registry_credentials_from_a_password_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    // A quote and a backslash to prove the JSON is escaped; the final newline is dropped.
    std::fs::write(
        dir.path().join("secrets/registry-password"),
        "pa\"ss\\word\n",
    )
    .unwrap();
    let a = addons(
        "registry:\n  server: registry.example.com:5000\n  username: robot$ci\n  passwordFile: secrets/registry-password\n  email: ops@example.com\n",
        dir.path(),
    );
    assert!(a.contains_key("registry-secret"), "{:?}", names(&a));
    let docs = validate("registry-secret", &a["registry-secret"]);
    let secret = find(&docs, "Secret", "registry-credentials");
    assert_eq!(secret["metadata"]["namespace"], "default");
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    // stringData: the API server stores it base64-encoded under data.
    let json = str_of(
        &secret["stringData"][".dockerconfigjson"],
        ".dockerconfigjson",
    );
    let cfg: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!(".dockerconfigjson is not JSON: {e}\n{json}"));
    let entry = &cfg["auths"]["registry.example.com:5000"];
    assert_eq!(entry["username"], "robot$ci", "{cfg}");
    assert_eq!(entry["password"], "pa\"ss\\word", "{cfg}");
    assert_eq!(entry["email"], "ops@example.com", "{cfg}");
    let sa = find(&docs, "ServiceAccount", "default");
    assert_eq!(sa["imagePullSecrets"][0]["name"], "registry-credentials");

    // Without an email, and a JSON key as the password (GCR's _json_key).
    let key = "{\n  \"type\": \"service_account\",\n  \"private_key\": \"-----BEGIN KEY-----\\nabc\\n-----END KEY-----\\n\"\n}\n";
    std::fs::write(dir.path().join("secrets/key.json"), key).unwrap();
    let a = addons(
        "registry:\n  server: https://europe-docker.pkg.dev\n  username: _json_key\n  passwordFile: secrets/key.json\n",
        dir.path(),
    );
    let docs = validate("registry-secret-json-key", &a["registry-secret"]);
    let json = find(&docs, "Secret", "registry-credentials")["stringData"][".dockerconfigjson"]
        .as_str()
        .unwrap();
    let cfg: Value = serde_json::from_str(json).unwrap();
    let entry = &cfg["auths"]["https://europe-docker.pkg.dev"];
    assert_eq!(entry["password"], key.trim_end_matches('\n'));
    assert!(entry.get("email").is_none(), "{cfg}");
    assert!(key.contains("\n  \"type\""));
}

#[test]
fn user_secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("files")).unwrap();
    let env = "DATABASE_URL=postgres://app@db/app\nMODE=production\n";
    let binary: Vec<u8> = (0u8..=255).collect();
    std::fs::write(dir.path().join("files/app.env"), env).unwrap();
    std::fs::write(dir.path().join("files/blob.bin"), &binary).unwrap();
    let a = addons(
        "secrets:\n  - name: app-config\n    namespace: prod\n    files: [files/app.env, files/blob.bin]\n  - name: env-only\n    files: [files/app.env]\n",
        dir.path(),
    );
    assert!(a.contains_key("user-secrets"), "{:?}", names(&a));
    let docs = validate("user-secrets", &a["user-secrets"]);
    assert_eq!(docs.len(), 2, "{}", a["user-secrets"]);
    let s = find(&docs, "Secret", "app-config");
    assert_eq!(s["metadata"]["namespace"], "prod");
    assert_eq!(s["type"], "Opaque");
    assert_eq!(s["data"]["app.env"], b64(env.as_bytes()));
    assert_eq!(s["data"]["blob.bin"], b64(&binary));
    let s = find(&docs, "Secret", "env-only");
    assert_eq!(s["metadata"]["namespace"], "default");
    assert_eq!(s["data"]["app.env"], b64(env.as_bytes()));
    assert_eq!(s["data"].as_object().unwrap().len(), 1);
}

#[test]
fn everything_at_once_validates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "x\n").unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    let a = addons(
        "provider:\n  type: vagrant\naddons:\n  logging:\n    enabled: true\n  monitoring:\n    enabled: true\n    externalAccess: true\nexpose:\n  prometheus:\n    type: NodePort\nregistry:\n  server: r.example\n  username: u\n  passwordFile: pw\nsecrets:\n  - name: t\n    files: [token]\n",
        dir.path(),
    );
    assert_eq!(
        names(&a),
        [
            "coredns",
            "flannel",
            "logging",
            "metrics-server",
            "monitoring",
            "registry-secret",
            "user-secrets"
        ]
    );
    let docs = validate_all(&a);
    // Off "local", external access means a LoadBalancer (node.rs decides); a NodePort without
    // a fixed port leaves the choice to the API server.
    assert_eq!(
        service(&docs["monitoring"], "grafana")["type"],
        "LoadBalancer"
    );
    let p = service(&docs["monitoring"], "prometheus");
    assert_eq!(p["type"], "NodePort");
    assert!(p["ports"][0].get("nodePort").is_none());
}
