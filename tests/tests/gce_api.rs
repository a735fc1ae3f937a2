//! The Compute API client (controller/src/provider/gce/compute.rs) against the Compute API
//! stand-in (tests/src/gce_api.rs), and the stand-in against the real gcloud CLI: gcloud
//! creates, lists, describes and deletes an instance through it, and the insert body
//! Pangaea sends has the fields and shapes of gcloud's for the same instance. Then what the
//! client promises: a lost response retried with the same requestId creates once, an
//! existing instance adopted only when it is the cluster's, a zone out of resources named,
//! every page of a list read.
//!
//! gcloud is kept on loopback: the endpoint override, an access-token file, and the
//! metadata-server probe, usage reporting and update checks turned off ([`gcloud`]).

use pangaea_controller::provider::gce::compute::{
    CLUSTER_LABEL, Compute, ComputeError, Created, InstanceSpec, Nic, TokenSource,
};
use pangaea_tests::gce_api::{GceApi, PROJECT};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const ZONE: &str = "us-central1-a";
const T: Duration = Duration::from_secs(30);

fn spec(name: &str, zone: &str) -> InstanceSpec {
    InstanceSpec {
        name: name.into(),
        zone: zone.into(),
        machine_type: "e2-small".into(),
        image: ("ubuntu-2404-lts-amd64".into(), "ubuntu-os-cloud".into()),
        boot_disk: (20, "pd-balanced".into()),
        user_data: "#cloud-config\n".into(),
        labels: [(CLUSTER_LABEL.to_string(), "demo".to_string())].into(),
        tags: vec!["pangaea-demo".into()],
        spot: false,
        data_disks: vec![],
        nic: Nic::default(),
    }
}

fn client(api: &GceApi, dir: &Path) -> Compute {
    let token = dir.join("token");
    std::fs::write(&token, "ya29.test-token\n").unwrap();
    Compute::new(&api.base(), PROJECT, TokenSource::File(token))
        .with_retries(4, Duration::from_millis(50))
}

fn require_gcloud() {
    assert!(
        std::process::Command::new("gcloud")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
    );
}

/// gcloud against the stand-in only. Its configuration directory is seeded with the answer
/// to "is this a GCE VM?" (`gce`: False): on a fresh directory gcloud resolves
/// metadata.google.internal to find out, even with CLOUDSDK_CORE_CHECK_GCE_METADATA off
/// (seen with strace; seeded, it connects to 127.0.0.1 only).
async fn gcloud(api: &GceApi, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let token = dir.join("token");
    std::fs::write(&token, "ya29.test-token\n").unwrap();
    std::fs::create_dir_all(dir.join("gcloud")).unwrap();
    std::fs::write(dir.join("gcloud/gce"), "False").unwrap();
    let out = tokio::process::Command::new("gcloud")
        .args(args)
        .env("CLOUDSDK_CONFIG", dir.join("gcloud"))
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE", api.base())
        .env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", &token)
        .env("CLOUDSDK_CORE_PROJECT", PROJECT)
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
        .env("CLOUDSDK_CORE_CHECK_GCE_METADATA", "false")
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        .output()
        .await
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("gcloud {args:?}: {}\n{o}\n{e}", out.status);
    (out.status.success(), o, e)
}

/// `v` with every leaf replaced by its type: what "the same shape" compares.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_drives_the_stand_in_and_pangaea_sends_what_gcloud_sends() {
    require_gcloud();
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, "#cloud-config\n").unwrap();
    // The cluster's own network and subnetwork, made by gcloud; Pangaea's bodies for them
    // are gcloud's, so Pangaea adopts them.
    let description = pangaea_controller::provider::gce::compute::owner_description("demo");
    for args in [
        vec![
            "compute",
            "networks",
            "create",
            "pangaea-demo",
            "--subnet-mode",
            "custom",
        ],
        vec![
            "compute",
            "networks",
            "subnets",
            "create",
            "pangaea-demo",
            "--network",
            "pangaea-demo",
            "--region",
            "us-central1",
            "--range",
            "10.213.0.0/24",
        ],
    ] {
        let mut args = args.clone();
        args.extend(["--description", &description, "--format", "json"]);
        let (ok, _, _) = gcloud(&api, dir.path(), &args).await;
        assert!(ok);
    }
    let c = client(&api, dir.path());
    assert_eq!(
        c.ensure_network("pangaea-demo", "demo", T).await.unwrap(),
        Created::Adopted
    );
    assert_eq!(
        c.ensure_subnetwork(
            "us-central1",
            "pangaea-demo",
            "pangaea-demo",
            "10.213.0.0/24",
            "demo",
            T
        )
        .await
        .unwrap(),
        Created::Adopted
    );
    for (collection, name) in [
        ("global/networks", "pangaea-demo"),
        ("regions/us-central1/subnetworks", "pangaea-demo"),
    ] {
        let theirs = api.requests("POST", collection)[0].body.clone();
        let ours = api.requests("POST", collection)[1].body.clone();
        assert_eq!(
            ours, theirs,
            "{collection}/{name}: gcloud's body, value for value"
        );
    }
    let (ok, out, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute",
            "instances",
            "create",
            "node-1",
            "--zone",
            ZONE,
            "--machine-type",
            "e2-small",
            "--image-family",
            "ubuntu-2404-lts-amd64",
            "--image-project",
            "ubuntu-os-cloud",
            "--boot-disk-size",
            "20GB",
            "--boot-disk-type",
            "pd-balanced",
            &format!("--metadata-from-file=user-data={}", user_data.display()),
            "--labels",
            "pangaea-cluster=demo",
            "--tags",
            "pangaea-demo",
            "--network",
            "pangaea-demo",
            "--subnet",
            "pangaea-demo",
            "--private-network-ip",
            "10.213.0.11",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok);
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created[0]["name"], "node-1");
    assert_eq!(created[0]["status"], "RUNNING");
    let (ok, out, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute",
            "instances",
            "list",
            "--zones",
            ZONE,
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (ok, out, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute",
            "instances",
            "describe",
            "node-1",
            "--zone",
            ZONE,
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok);
    let described: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(described["labels"][CLUSTER_LABEL], "demo");

    // Pangaea's insert of the same instance: gcloud's fields and shapes, and values.
    let theirs = api.requests("POST", "zones/us-central1-a/instances")[0]
        .body
        .clone();
    let node2 = InstanceSpec {
        nic: Nic {
            network: "pangaea-demo".into(),
            subnetwork: Some("pangaea-demo".into()),
            address: Some("10.213.0.12".parse().unwrap()),
            external_address: None,
        },
        ..spec("node-2", ZONE)
    };
    assert_eq!(
        c.create_instance(&node2, "demo", T).await.unwrap(),
        Created::Created
    );
    let ours = api.requests("POST", "zones/us-central1-a/instances")[1]
        .body
        .clone();
    let mut expected = shape(&theirs);
    // Deliberately left out: the default service account (nodes call no Google API, so
    // they hold no Google credentials) and two fields at their defaults.
    for k in ["serviceAccounts", "canIpForward", "deletionProtection"] {
        expected.as_object_mut().unwrap().remove(k);
    }
    assert_eq!(
        shape(&ours),
        expected,
        "ours: {ours:#}\ngcloud's: {theirs:#}"
    );
    for pointer in [
        "/machineType",
        "/labels",
        "/metadata",
        "/tags",
        "/scheduling",
        "/disks/0/initializeParams/diskSizeGb",
        "/disks/0/initializeParams/diskType",
        "/networkInterfaces/0/network",
        "/networkInterfaces/0/subnetwork",
        "/networkInterfaces/0/accessConfigs",
    ] {
        assert_eq!(ours.pointer(pointer), theirs.pointer(pointer), "{pointer}");
    }
    let image = |v: &Value| {
        v.pointer("/disks/0/initializeParams/sourceImage")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        image(&ours).contains("ubuntu-os-cloud") && image(&ours).ends_with("ubuntu-2404-lts-amd64")
    );
    assert!(image(&theirs).ends_with("ubuntu-2404-lts-amd64"));

    // An external address moved to an instance, as `prepare` moves the API's static
    // address: gcloud's delete-access-config and add-access-config, and Pangaea's calls for
    // the same on node-2, query for query and body for body (the address aside).
    let mut reserved = Vec::new();
    for name in ["pangaea-demo-api", "pangaea-demo-other"] {
        let (_, ip) = c
            .ensure_address("us-central1", name, "demo", T)
            .await
            .unwrap();
        reserved.push(ip);
    }
    for args in [
        vec!["delete-access-config", "node-1"],
        vec!["add-access-config", "node-1", "--address", &reserved[1]],
    ] {
        let mut args: Vec<&str> = ["compute", "instances"].into_iter().chain(args).collect();
        args.extend(["--zone", ZONE, "--access-config-name", "external-nat"]);
        let (ok, out, err) = gcloud(&api, dir.path(), &args).await;
        assert!(ok, "gcloud {}: {out}{err}", args.join(" "));
    }
    c.set_external_address(ZONE, "node-2", Some(reserved[0].parse().unwrap()), T)
        .await
        .unwrap();
    // The operation's parameters; not the requestId (each call's own) nor gcloud's
    // `alt=json` (the response's format, JSON anyway).
    let without_request_id = |q: &str| {
        q.split('&')
            .filter(|kv| !kv.starts_with("requestId=") && !kv.starts_with("alt="))
            .collect::<Vec<_>>()
            .join("&")
    };
    for (call, natip) in [("deleteAccessConfig", None), ("addAccessConfig", Some(()))] {
        let calls = api.requests("POST", call);
        assert_eq!(calls.len(), 2, "{call}: {calls:?}");
        let (theirs, ours) = (&calls[0], &calls[1]);
        assert!(theirs.path.ends_with(&format!("node-1/{call}")));
        assert!(ours.path.ends_with(&format!("node-2/{call}")));
        assert_eq!(
            without_request_id(&ours.query),
            without_request_id(&theirs.query),
            "{call}"
        );
        let mut body = ours.body.clone();
        if natip.is_some() {
            assert_eq!(theirs.body["natIP"], reserved[1].as_str());
            assert_eq!(body["natIP"], reserved[0].as_str());
            body["natIP"] = theirs.body["natIP"].clone();
        }
        assert_eq!(body, theirs.body, "{call}");
    }
    let status = |name: &str| {
        let s = api.state.lock().unwrap();
        let a = &s.addresses[&("us-central1".to_owned(), name.to_owned())];
        (
            a["status"].as_str().unwrap_or_default().to_owned(),
            a["users"][0]
                .as_str()
                .and_then(|u| u.rsplit('/').next())
                .unwrap_or_default()
                .to_owned(),
        )
    };
    assert_eq!(
        status("pangaea-demo-api"),
        ("IN_USE".into(), "node-2".into())
    );
    assert_eq!(
        status("pangaea-demo-other"),
        ("IN_USE".into(), "node-1".into())
    );
    // An address in use is not given to another instance.
    let taken = c
        .set_external_address(ZONE, "node-1", Some(reserved[0].parse().unwrap()), T)
        .await
        .unwrap_err();
    assert!(taken.to_string().contains("already in-use"), "{taken}");
    // ... and the refused instance keeps the address it had.
    assert_eq!(
        status("pangaea-demo-other"),
        ("IN_USE".into(), "node-1".into())
    );

    // gcloud sees Pangaea's instance, and deletes both (one per command: for several, gcloud
    // sends a multipart batch request, which the stand-in does not implement).
    let (ok, out, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute",
            "instances",
            "describe",
            "node-2",
            "--zone",
            ZONE,
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok, "{out}");
    for n in ["node-1", "node-2"] {
        let (ok, _, _) = gcloud(
            &api,
            dir.path(),
            &[
                "compute",
                "instances",
                "delete",
                n,
                "--zone",
                ZONE,
                "--quiet",
            ],
        )
        .await;
        assert!(ok);
    }
    assert!(api.instances(ZONE).is_empty());
    // Deleted instances free their addresses.
    assert_eq!(status("pangaea-demo-api").0, "RESERVED");
    assert_eq!(status("pangaea-demo-other").0, "RESERVED");
    let s = api.state.lock().unwrap();
    assert!(s.unserved.is_empty(), "{:?}", s.unserved);
    assert!(
        s.log
            .iter()
            .all(|r| r.authorization == "Bearer ya29.test-token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_is_retried_with_the_same_request_id_and_creates_once() {
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&api, dir.path());
    api.state.lock().unwrap().lose_responses = 1;
    assert_eq!(
        c.create_instance(&spec("node-1", ZONE), "demo", T)
            .await
            .unwrap(),
        Created::Created
    );
    assert_eq!(api.instances(ZONE), ["node-1"]);
    let inserts = api.requests("POST", "zones/us-central1-a/instances");
    assert_eq!(inserts.len(), 2, "the insert was sent again");
    assert!(inserts[0].query.contains("requestId="));
    assert_eq!(
        inserts[0].query, inserts[1].query,
        "with the same requestId"
    );
    // A second logical call gets a new id: it is refused as existing, then adopted.
    assert_eq!(
        c.create_instance(&spec("node-1", ZONE), "demo", T)
            .await
            .unwrap(),
        Created::Adopted
    );
    let inserts = api.requests("POST", "zones/us-central1-a/instances");
    assert_ne!(inserts[2].query, inserts[0].query);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_instance_is_adopted_only_when_it_is_the_clusters() {
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&api, dir.path());
    let mut other = spec("node-1", ZONE);
    other
        .labels
        .insert(CLUSTER_LABEL.into(), "someone-else".into());
    c.create_instance(&other, "someone-else", T).await.unwrap();
    let e = c
        .create_instance(&spec("node-1", ZONE), "demo", T)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ComputeError::NotOurs { found: Some(f), .. } if f == "someone-else"),
        "{e}"
    );
    assert!(e.to_string().contains("delete or rename it"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_out_of_resources_is_named_by_the_operation() {
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&api, dir.path());
    api.state.lock().unwrap().exhausted.insert(ZONE.into());
    let e = c
        .create_instance(&spec("node-1", ZONE), "demo", T)
        .await
        .unwrap_err();
    assert_eq!(e.reasons(), ["ZONE_RESOURCE_POOL_EXHAUSTED"], "{e}");
    assert!(api.instances(ZONE).is_empty());
    // Another zone of the region has room.
    let elsewhere = "us-central1-b";
    assert_eq!(
        c.create_instance(&spec("node-1", elsewhere), "demo", T)
            .await
            .unwrap(),
        Created::Created
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_read_every_page_and_only_the_clusters_instances() {
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&api, dir.path());
    api.state.lock().unwrap().page_size = 2;
    for i in 1..=5 {
        c.create_instance(&spec(&format!("node-{i}"), ZONE), "demo", T)
            .await
            .unwrap();
    }
    let mut stranger = spec("other-1", ZONE);
    stranger.labels.insert(CLUSTER_LABEL.into(), "other".into());
    c.create_instance(&stranger, "other", T).await.unwrap();
    let listed = c.list_instances(ZONE, "demo").await.unwrap();
    let names: Vec<&str> = listed.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3", "node-4", "node-5"]);
    assert_eq!(
        api.requests("GET", "zones/us-central1-a/instances").len(),
        3,
        "three pages"
    );
    // Stop, start, delete; a second delete finds nothing.
    let op = c.instance_action(ZONE, "node-1", "stop").await.unwrap();
    c.wait(&op, T).await.unwrap();
    assert_eq!(
        c.get_instance(ZONE, "node-1").await.unwrap().unwrap()["status"],
        "TERMINATED"
    );
    let op = c.delete_instance(ZONE, "node-1").await.unwrap().unwrap();
    c.wait(&op, T).await.unwrap();
    assert!(c.delete_instance(ZONE, "node-1").await.unwrap().is_none());
    assert!(c.get_instance(ZONE, "node-1").await.unwrap().is_none());
}

/// An RSA key made by openssl: (PKCS#8 PEM, the public key as PKCS#1 DER for the stand-in).
fn rsa_key(dir: &Path, name: &str) -> (String, Vec<u8>) {
    let pem = dir.join(format!("{name}.pem"));
    let der = dir.join(format!("{name}.der"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ],
        vec![
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-outform",
            "DER",
            "-in",
            pem.to_str().unwrap(),
            "-out",
        ],
    ] {
        let target = if args[0] == "genpkey" { &pem } else { &der };
        let out = std::process::Command::new("openssl")
            .args(&args)
            .arg(target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pair = ring::rsa::KeyPair::from_pkcs8(&std::fs::read(der).unwrap()).unwrap();
    (
        std::fs::read_to_string(pem).unwrap(),
        pair.public().as_ref().to_vec(),
    )
}

fn key_file(dir: &Path, api: &GceApi, pem: &str) -> std::path::PathBuf {
    let path = dir.join("key.json");
    let key = serde_json::json!({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "k1",
        "private_key": pem, "client_email": "pangaea@demo.iam.gserviceaccount.com",
        "token_uri": api.token_uri(),
    });
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

/// A service-account key (`GOOGLE_APPLICATION_CREDENTIALS`): the JWT signed with it is
/// checked by the stand-in with the key's public half and exchanged for a token the Compute
/// calls carry; the token is kept until shortly before it expires, then replaced; a key the
/// account does not have is refused, and the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_key_is_exchanged_for_tokens_and_refreshed() {
    use pangaea_controller::provider::gce::GcloudEnv;
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (pem, public) = rsa_key(dir.path(), "sa");
    api.state.lock().unwrap().sa_public_key = Some(public);
    let key = key_file(dir.path(), &api, &pem);
    let env = GcloudEnv::from_vars(|k| {
        (k == "GOOGLE_APPLICATION_CREDENTIALS").then(|| key.display().to_string())
    });
    let c = Compute::new(&api.base(), PROJECT, env.token_source().unwrap());
    c.create_instance(&spec("node-1", ZONE), "demo", T)
        .await
        .unwrap();
    c.get_instance(ZONE, "node-1").await.unwrap().unwrap();
    assert_eq!(
        api.state.lock().unwrap().issued,
        ["ya29.sa-1"],
        "one token for both calls"
    );
    assert!(api.requests("GET", "instances/node-1")[0].authorization == "Bearer ya29.sa-1");

    // Tokens that live no longer than the refresh margin are due for replacement at once:
    // each call takes a new one.
    api.state.lock().unwrap().token_lifetime =
        pangaea_controller::provider::gce::service_account::REFRESH_BEFORE.as_secs();
    let c = Compute::new(&api.base(), PROJECT, env.token_source().unwrap());
    c.get_instance(ZONE, "node-1").await.unwrap().unwrap();
    c.get_instance(ZONE, "node-1").await.unwrap().unwrap();
    assert_eq!(
        api.state.lock().unwrap().issued.len(),
        3,
        "refreshed before it expired"
    );

    // Another key: its signature does not verify.
    let (other, _) = rsa_key(dir.path(), "other");
    let key = key_file(dir.path(), &api, &other);
    let env = GcloudEnv::from_vars(|k| {
        (k == "GOOGLE_APPLICATION_CREDENTIALS").then(|| key.display().to_string())
    });
    let c = Compute::new(&api.base(), PROJECT, env.token_source().unwrap());
    let e = c
        .get_instance(ZONE, "node-1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invalid_grant") && e.contains("Invalid JWT Signature"),
        "{e}"
    );
    assert!(e.contains("pangaea@demo.iam.gserviceaccount.com"), "{e}");
}

/// Zone failover: the region's zones come from the API; a zone out of capacity moves the
/// node to the next one, saying so; when every zone is full, the error names them all and
/// no instance is left anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moves_to_another_zone_of_the_region_when_its_zone_is_full() {
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&api, dir.path());
    let zones = c.region_zones("us-central1").await.unwrap();
    assert_eq!(
        zones,
        [
            "us-central1-a",
            "us-central1-b",
            "us-central1-c",
            "us-central1-f"
        ]
    );
    api.state
        .lock()
        .unwrap()
        .exhausted
        .extend(["us-central1-b".to_string(), "us-central1-a".to_string()]);
    let said = std::sync::Mutex::new(Vec::new());
    let progress = |m: &str| said.lock().unwrap().push(m.to_owned());
    let mut s = spec("node-2", "us-central1-b");
    let (zone, created) = c
        .create_in_region(&s, &zones, "demo", T, &progress)
        .await
        .unwrap();
    assert_eq!(
        (zone.as_str(), created),
        ("us-central1-c", Created::Created)
    );
    let said = said.into_inner().unwrap();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].contains("us-central1-b has no e2-small")
            && said[0].contains("trying us-central1-a"),
        "{said:?}"
    );
    assert!(api.instances("us-central1-b").is_empty() && api.instances("us-central1-a").is_empty());

    api.state
        .lock()
        .unwrap()
        .exhausted
        .extend(zones.iter().cloned());
    s.name = "node-3".into();
    let e = c
        .create_in_region(&s, &zones, "demo", T, &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ComputeError::NoCapacity { zones: z, .. } if z.len() == 4),
        "{e}"
    );
    assert!(e.to_string().contains("another region"), "{e}");
    assert_eq!(
        api.instances("us-central1-c"),
        ["node-2"],
        "nothing else created"
    );
}

/// A metadata item (how a recovery token reaches a cloud node) is set by read-modify-write
/// with the fingerprint: another writer coming between gets a 412, the item is written on
/// the next round, and the other writer's item is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_changed_with_its_fingerprint_and_a_412_reads_again() {
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&api, dir.path());
    c.create_instance(&spec("node-1", ZONE), "demo", T)
        .await
        .unwrap();
    api.state.lock().unwrap().concurrent_metadata_writes = 1;
    c.set_metadata_item(ZONE, "node-1", "pangaea-recovery-token", "t1", T)
        .await
        .unwrap();
    let i = c.get_instance(ZONE, "node-1").await.unwrap().unwrap();
    let items: Vec<(String, String)> = i["metadata"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_owned(),
                m["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        items.contains(&("user-data".into(), "#cloud-config\n".into())),
        "{items:?}"
    );
    assert!(
        items.contains(&("written-meanwhile".into(), "yes".into())),
        "{items:?}"
    );
    assert!(
        items.contains(&("pangaea-recovery-token".into(), "t1".into())),
        "{items:?}"
    );
    assert_eq!(
        api.requests("POST", "instances/node-1/setMetadata").len(),
        2,
        "a 412, then done"
    );
    // Replacing the item keeps one of it.
    c.set_metadata_item(ZONE, "node-1", "pangaea-recovery-token", "t2", T)
        .await
        .unwrap();
    let i = c.get_instance(ZONE, "node-1").await.unwrap().unwrap();
    let tokens: Vec<&Value> = i["metadata"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["key"] == "pangaea-recovery-token")
        .collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["value"], "t2");
}

/// Firewall rules and static addresses, which take no labels where gcloud creates them: the
/// description marks them as the cluster's. gcloud creates both through the stand-in;
/// Pangaea's firewall body has the shape and values of gcloud's; the rule gcloud made with
/// the cluster's description is adopted, the address it made without one is refused; then
/// Pangaea reserves its own address and deletes what it owns (a second delete finds
/// nothing), and gcloud sees it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firewall_rules_and_addresses_are_created_adopted_or_refused_by_their_description() {
    use pangaea_controller::provider::gce::compute::{Allow, FirewallSpec, owner_description};
    require_gcloud();
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute",
            "firewall-rules",
            "create",
            "pangaea-demo-api",
            "--network",
            "default",
            "--allow",
            "tcp:6443",
            "--source-ranges",
            "0.0.0.0/0",
            "--target-tags",
            "pangaea-demo",
            "--description",
            &owner_description("demo"),
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok);
    let (ok, _, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute",
            "addresses",
            "create",
            "pangaea-demo-api",
            "--region",
            "us-central1",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok);
    let theirs = api.requests("POST", "global/firewalls")[0].body.clone();

    let c = client(&api, dir.path());
    let rule = FirewallSpec {
        name: "pangaea-demo-api".into(),
        network: "default".into(),
        allow: Allow::Tcp(vec![6443]),
        source_ranges: vec!["0.0.0.0/0".into()],
        target_tag: "pangaea-demo".into(),
    };
    assert_eq!(
        c.firewall_body(&rule, "demo"),
        theirs,
        "gcloud's body, value for value"
    );
    // The rule between a cluster's nodes: gcloud's body for `--allow tcp,udp,icmp`.
    let (ok, _, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute",
            "firewall-rules",
            "create",
            "pangaea-demo-internal",
            "--network",
            "default",
            "--allow",
            "tcp,udp,icmp",
            "--source-ranges",
            "10.213.0.0/24",
            "--target-tags",
            "pangaea-demo",
            "--description",
            &owner_description("demo"),
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok);
    let internal = FirewallSpec {
        name: "pangaea-demo-internal".into(),
        network: "default".into(),
        allow: Allow::Everything,
        source_ranges: vec!["10.213.0.0/24".into()],
        target_tag: "pangaea-demo".into(),
    };
    assert_eq!(
        c.firewall_body(&internal, "demo"),
        api.requests("POST", "global/firewalls")[1].body,
        "gcloud's body, value for value"
    );
    assert_eq!(
        c.ensure_firewall(&rule, "demo", T).await.unwrap(),
        Created::Adopted
    );
    let e = c
        .ensure_firewall(&rule, "other", T)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("firewall rule pangaea-demo-api") && e.contains("pangaea cluster demo"),
        "{e}"
    );
    let e = c
        .ensure_address("us-central1", "pangaea-demo-api", "demo", T)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ComputeError::NotOurs { found: None, .. }),
        "{e}"
    );

    let (created, ip) = c
        .ensure_address("us-central1", "pangaea-demo-lb", "demo", T)
        .await
        .unwrap();
    assert_eq!(created, Created::Created);
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
    let (again, same) = c
        .ensure_address("us-central1", "pangaea-demo-lb", "demo", T)
        .await
        .unwrap();
    assert_eq!((again, same), (Created::Adopted, ip), "idempotent");
    assert!(
        c.delete_address("us-central1", "pangaea-demo-lb", T)
            .await
            .unwrap()
    );
    assert!(
        !c.delete_address("us-central1", "pangaea-demo-lb", T)
            .await
            .unwrap()
    );
    // Only the cluster's own rule is deleted.
    let e = c
        .delete_firewall("pangaea-demo-api", "other", T)
        .await
        .unwrap_err();
    assert!(matches!(e, ComputeError::NotOurs { .. }), "{e}");
    assert!(
        c.delete_firewall("pangaea-demo-api", "demo", T)
            .await
            .unwrap()
    );
    assert!(
        !c.delete_firewall("pangaea-demo-api", "demo", T)
            .await
            .unwrap()
    );
    let (ok, out, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute",
            "firewall-rules",
            "describe",
            "pangaea-demo-api",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(!ok, "{out}");
    let s = api.state.lock().unwrap();
    assert!(s.unserved.is_empty(), "{:?}", s.unserved);
}

/// Data disks: created with the instance the first time (the element of gcloud's
/// `--create-disk`, value for value), kept when the instance is deleted (the boot disk is
/// not), attached again — the same disk — when it is created anew, and deleted only once
/// free (`down --purge`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_disks_outlive_their_instance_and_are_attached_again() {
    use pangaea_controller::provider::gce::compute::DataDisk;
    require_gcloud();
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute", "instances", "create", "g-1", "--zone", ZONE,
            "--machine-type", "e2-small",
            "--image-family", "ubuntu-2404-lts-amd64", "--image-project", "ubuntu-os-cloud",
            "--create-disk=name=g-1-data,size=50GB,type=pd-balanced,device-name=data,auto-delete=no",
            "--format", "json",
        ],
    )
    .await;
    assert!(ok);
    let theirs = api.requests("POST", "zones/us-central1-a/instances")[0].body["disks"][1].clone();

    let c = client(&api, dir.path());
    let mut s = spec("node-1", ZONE);
    s.data_disks = vec![DataDisk {
        name: "node-1-data".into(),
        device_name: "data".into(),
        size_gib: 50,
        disk_type: "pd-balanced".into(),
    }];
    c.create_instance(&s, "demo", T).await.unwrap();
    let ours = api.requests("POST", "zones/us-central1-a/instances")[1].body["disks"][1].clone();
    let mut expected = theirs.clone();
    expected["initializeParams"]["diskName"] = "node-1-data".into();
    assert_eq!(
        ours, expected,
        "gcloud's data disk, value for value (but its name)"
    );
    let disks = |api: &GceApi| -> Vec<String> {
        api.state
            .lock()
            .unwrap()
            .disks
            .keys()
            .map(|(_, d)| d.clone())
            .collect()
    };
    assert_eq!(disks(&api), ["g-1", "g-1-data", "node-1", "node-1-data"]);

    // In use: not deleted. The instance goes: its boot disk with it, the data disk stays.
    let e = c.delete_disk(ZONE, "node-1-data", T).await.unwrap_err();
    assert_eq!(e.reasons(), ["resourceInUseByAnotherResource"], "{e}");
    let op = c.delete_instance(ZONE, "node-1").await.unwrap().unwrap();
    c.wait(&op, T).await.unwrap();
    assert_eq!(disks(&api), ["g-1", "g-1-data", "node-1-data"]);

    // Created anew: the same disk attached by source, nothing created for it.
    c.create_instance(&s, "demo", T).await.unwrap();
    let again = api.requests("POST", "zones/us-central1-a/instances")[2].body["disks"][1].clone();
    assert!(again["initializeParams"].is_null(), "{again}");
    assert!(
        again["source"]
            .as_str()
            .unwrap()
            .ends_with("/zones/us-central1-a/disks/node-1-data")
    );
    assert_eq!(again["deviceName"], "data");
    assert_eq!(disks(&api), ["g-1", "g-1-data", "node-1", "node-1-data"]);

    // Purge: instance, then disk; a second delete finds nothing.
    let op = c.delete_instance(ZONE, "node-1").await.unwrap().unwrap();
    c.wait(&op, T).await.unwrap();
    assert!(c.delete_disk(ZONE, "node-1-data", T).await.unwrap());
    assert!(!c.delete_disk(ZONE, "node-1-data", T).await.unwrap());
    let (ok, _, _) = gcloud(
        &api,
        dir.path(),
        &[
            "compute",
            "instances",
            "delete",
            "g-1",
            "--zone",
            ZONE,
            "--quiet",
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(
        disks(&api),
        ["g-1-data"],
        "gcloud's data disk kept too (auto-delete=no)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_switches_its_rules_and_deletes_a_nodes_data_disks_with_it_and_the_network_last()
 {
    use pangaea_controller::provider::gce::cluster::{Gce, GceCluster, PlannedNode};
    use pangaea_controller::provider::gce::compute::DataDisk;
    use pangaea_controller::provider::{NodeSpec, Provider};
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node: pangaea_core::NodeName = "node-1".parse().unwrap();
    let planned = PlannedNode {
        position: 0,
        zone: None,
        machine_type: "e2-small".into(),
        disks: vec![DataDisk {
            name: "demo-node-1-data".into(),
            device_name: "data".into(),
            size_gib: 10,
            disk_type: "pd-balanced".into(),
        }],
    };
    let cluster = GceCluster {
        cluster: "demo".into(),
        region: "us-central1".into(),
        zones: vec![],
        spot: false,
        advertise: None,
        node_cidr: pangaea_compiler::cidr::Cidr::parse("10.213.0.0/24").unwrap(),
        api_port: 6443,
        api_access: vec!["198.51.100.0/24".into()],
        node_ports: vec![30080, 30443],
        api_address: None,
        nodes: [(node.clone(), planned)].into(),
    };
    let rules = || {
        let s = api.state.lock().unwrap();
        s.firewalls
            .iter()
            .map(|(n, r)| {
                (
                    n.clone(),
                    r["allowed"][0]["ports"].clone(),
                    r["sourceRanges"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    // The API's and the NodePorts' rules, each switched off by the configuration, and the
    // tunnels' SSH rule, switched off by an advertised address: then deleted by the next
    // prepare, the internal one kept.
    let closed = Gce::new(
        client(&api, dir.path()),
        GceCluster {
            api_access: vec![],
            node_ports: vec![],
            advertise: Some("203.0.113.7".parse().unwrap()),
            ..cluster.clone()
        },
    );
    let gce = Gce::new(client(&api, dir.path()), cluster);
    gce.prepare(&|_| {}).await.unwrap();
    assert_eq!(
        rules(),
        vec![
            (
                "pangaea-demo-api".into(),
                serde_json::json!(["6443"]),
                serde_json::json!(["198.51.100.0/24"])
            ),
            (
                "pangaea-demo-internal".into(),
                Value::Null,
                serde_json::json!(["10.213.0.0/24"])
            ),
            (
                "pangaea-demo-nodeports".into(),
                serde_json::json!(["30080", "30443"]),
                serde_json::json!(["0.0.0.0/0"])
            ),
            (
                "pangaea-demo-ssh".into(),
                serde_json::json!(["22"]),
                serde_json::json!(["0.0.0.0/0"])
            ),
        ]
    );
    closed.prepare(&|_| {}).await.unwrap();
    assert_eq!(
        rules().into_iter().map(|r| r.0).collect::<Vec<_>>(),
        ["pangaea-demo-internal"]
    );
    // Without an advertised address, through tunnels: the controller on loopback.
    let tunnelled = gce.controller_endpoint().await.unwrap();
    assert!(tunnelled.tunnel, "{tunnelled:?}");
    assert_eq!(tunnelled.listen, tunnelled.advertise);
    assert!(tunnelled.listen.is_loopback(), "{tunnelled:?}");
    let direct = closed.controller_endpoint().await.unwrap();
    assert!(!direct.tunnel, "{direct:?}");
    assert_eq!(direct.advertise.to_string(), "203.0.113.7");
    gce.prepare(&|_| {}).await.unwrap();
    let info = gce
        .create(&NodeSpec {
            name: node.clone(),
            address: "10.213.0.11".parse().unwrap(),
            user_data: "#cloud-config\n".into(),
            memory_mib: 2048,
            cpus: 2,
        })
        .await
        .unwrap();
    assert_eq!(info.address.to_string(), "10.213.0.11");
    // The tunnels go to the running instance's external address (the stand-in's is its
    // own address); with an advertised address there are none.
    let hosts = gce.tunnel_hosts().await.unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0].node, node);
    assert_eq!(hosts[0].instance_id, info.instance_id);
    assert_eq!(hosts[0].address.to_string(), "10.213.0.11");
    assert!(closed.tunnel_hosts().await.unwrap().is_empty());
    let disk = ("us-central1-a".to_owned(), "demo-node-1-data".to_owned());
    assert!(api.state.lock().unwrap().disks.contains_key(&disk));
    // Teardown while a node exists removes nothing.
    gce.teardown().await.unwrap();
    assert_eq!(api.state.lock().unwrap().networks.len(), 1);
    gce.delete(&node).await.unwrap();
    {
        let s = api.state.lock().unwrap();
        assert!(s.instances.is_empty());
        assert!(
            !s.disks.contains_key(&disk),
            "the node's data disk went with it"
        );
    }
    gce.delete(&node).await.unwrap();
    gce.teardown().await.unwrap();
    let s = api.state.lock().unwrap();
    assert!(s.networks.is_empty() && s.subnetworks.is_empty() && s.firewalls.is_empty());
    assert!(s.unserved.is_empty(), "{:?}", s.unserved);
}

/// Providers (#12): the API's static external address. `prepare` reserves it (once: the
/// next run keeps it), the API node's instance is created with it, the other nodes' with
/// ephemeral ones; when another node becomes the API node it moves only once no instance
/// holds it; switched off, its holder gets an ephemeral address and it is released; and
/// `down --purge`'s teardown releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_static_address_is_reserved_held_by_the_api_node_moved_and_released() {
    use pangaea_controller::provider::gce::cluster::{
        Gce, GceCluster, PlannedNode, StaticApiAddress,
    };
    use pangaea_controller::provider::{NodeSpec, Provider};
    let api = GceApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let name = |n: &str| -> pangaea_core::NodeName { n.parse().unwrap() };
    let planned = |position| PlannedNode {
        position,
        zone: None,
        machine_type: "e2-small".into(),
        disks: vec![],
    };
    let held_by = |node: &str| StaticApiAddress {
        name: "pangaea-demo-api".into(),
        node: name(node),
    };
    let cluster = GceCluster {
        cluster: "demo".into(),
        region: "us-central1".into(),
        zones: vec![],
        spot: false,
        advertise: Some("203.0.113.7".parse().unwrap()),
        node_cidr: pangaea_compiler::cidr::Cidr::parse("10.213.0.0/24").unwrap(),
        api_port: 6443,
        api_access: vec![],
        node_ports: vec![],
        api_address: Some(held_by("node-1")),
        nodes: [(name("node-1"), planned(0)), (name("node-2"), planned(1))].into(),
    };
    let provider = |api_address: Option<StaticApiAddress>| {
        Gce::new(
            client(&api, dir.path()),
            GceCluster {
                api_address,
                ..cluster.clone()
            },
        )
    };
    let lines = std::sync::Mutex::new(Vec::<String>::new());
    let progress = |m: &str| lines.lock().unwrap().push(m.to_owned());
    let said = |needle: &str| {
        let l = lines.lock().unwrap();
        l.iter().any(|m| m.contains(needle))
    };
    let nat = |node: &str| -> String {
        let s = api.state.lock().unwrap();
        let i = s
            .instances
            .values()
            .find(|i| i["name"] == format!("demo-{node}"))
            .unwrap_or_else(|| panic!("no instance of {node}"));
        i["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let address = || {
        let s = api.state.lock().unwrap();
        s.addresses
            .get(&("us-central1".to_owned(), "pangaea-demo-api".to_owned()))
            .cloned()
    };

    let gce = provider(Some(held_by("node-1")));
    gce.prepare(&progress).await.unwrap();
    let ip = gce.api_address().await.unwrap().expect("reserved");
    assert!(said("reserved"), "{:?}", lines.lock().unwrap());
    assert_eq!(address().unwrap()["address"], ip.to_string());
    for (i, n) in ["node-1", "node-2"].into_iter().enumerate() {
        gce.create(&NodeSpec {
            name: name(n),
            address: format!("10.213.0.{}", 11 + i).parse().unwrap(),
            user_data: "#cloud-config\n".into(),
            memory_mib: 2048,
            cpus: 2,
        })
        .await
        .unwrap();
    }
    assert_eq!(nat("node-1"), ip.to_string(), "the API node holds it");
    assert_ne!(nat("node-2"), ip.to_string());
    assert_eq!(address().unwrap()["status"], "IN_USE");
    // A second `up`: kept, nothing moved, nothing reserved again.
    let gce = provider(Some(held_by("node-1")));
    gce.prepare(&progress).await.unwrap();
    assert!(said("kept"));
    assert_eq!(gce.api_address().await.unwrap(), Some(ip));
    assert!(api.requests("POST", "AccessConfig").is_empty());
    assert_eq!(api.state.lock().unwrap().addresses.len(), 1);

    // node-2 becomes the API node (node-1 removed): not while node-1's instance holds it...
    let moved = provider(Some(held_by("node-2")));
    moved.prepare(&progress).await.unwrap();
    assert!(
        said("still held by demo-node-1"),
        "{:?}",
        lines.lock().unwrap()
    );
    assert_eq!(nat("node-1"), ip.to_string());
    // ... and once it is gone, to node-2.
    gce.delete(&name("node-1")).await.unwrap();
    assert_eq!(address().unwrap()["status"], "RESERVED");
    moved.prepare(&progress).await.unwrap();
    assert!(said("moving the API's address"));
    assert_eq!(nat("node-2"), ip.to_string());

    // Switched off: node-2 gets an ephemeral address, the static one is released.
    let off = provider(None);
    off.prepare(&progress).await.unwrap();
    assert!(said("released (switched off)"));
    assert!(address().is_none());
    assert_ne!(nat("node-2"), ip.to_string());
    assert!(
        !nat("node-2").is_empty(),
        "an ephemeral address in its place"
    );
    assert_eq!(off.api_address().await.unwrap(), None);

    // On again, then `down --purge`: the teardown releases it with the network.
    let on = provider(Some(held_by("node-2")));
    on.prepare(&progress).await.unwrap();
    assert!(address().is_some());
    on.delete(&name("node-2")).await.unwrap();
    on.teardown().await.unwrap();
    let s = api.state.lock().unwrap();
    assert!(s.addresses.is_empty(), "{:?}", s.addresses);
    assert!(s.networks.is_empty());
    assert!(s.unserved.is_empty(), "{:?}", s.unserved);
}
