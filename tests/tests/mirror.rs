//! The controller's mirror: an artifact imported once is served to agents over mutual TLS
//! (the plan's upstream URL is rewritten to the mirror), archives are extracted on the node,
//! downloads resume at an offset, and the mirror refuses what it must.

use pangaea_artifact::{Digest, DigestKind};
use pangaea_controller::assign::Plan;
use pangaea_proto as pb;
use pangaea_tests::{TestAgent, TestController, eventually, file, mtls_client};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_install_artifacts_from_the_controller_mirror() {
    let ctl = TestController::start().await;
    let src = tempfile::tempdir().unwrap();
    let tool: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(src.path().join("tool"), &tool).unwrap();
    // An archive, as upstream releases come.
    std::fs::create_dir_all(src.path().join("pkg/bin")).unwrap();
    std::fs::write(src.path().join("pkg/bin/etcd"), b"#!/bin/sh\necho etcd\n").unwrap();
    let ok = std::process::Command::new("tar")
        .args(["czf", "pkg.tar.gz", "pkg"])
        .current_dir(src.path())
        .status()
        .unwrap();
    assert!(ok.success(), "tar is needed (apt-get install tar)");

    let [tool_256, _] = ctl
        .controller
        .mirror()
        .import(&src.path().join("tool"))
        .await
        .unwrap();
    let [_, pkg_512] = ctl
        .controller
        .mirror()
        .import(&src.path().join("pkg.tar.gz"))
        .await
        .unwrap();
    assert!(pkg_512.digest.starts_with("sha512:"));

    ctl.planner.set(
        "node-1",
        Plan {
            files: vec![file("/etc/tool.conf", "x")],
            artifacts: vec![
                // Upstream URLs that cannot be reached from here: only the mirror can serve them.
                pb::Artifact {
                    url: "https://downloads.invalid/tool".into(),
                    digest: tool_256.digest.clone(),
                    dest: "/usr/local/bin/tool".into(),
                    mode: 0o755,
                    members: vec![],
                },
                pb::Artifact {
                    url: "https://downloads.invalid/pkg.tar.gz".into(),
                    digest: pkg_512.digest.clone(),
                    dest: "/var/lib/pangaea-agent/artifacts/pkg.tar.gz".into(),
                    mode: 0o644,
                    members: vec![pb::ArchiveMember {
                        path: "pkg/bin/etcd".into(),
                        dest: "/usr/local/bin/etcd".into(),
                        mode: 0o755,
                    }],
                },
            ],
            ..Default::default()
        },
    );
    let (dir, cfg) = ctl.agent_config("node-1", &ctl.token(None).await);
    let agent = TestAgent::spawn(dir, cfg);
    eventually("artifacts installed and reported", T, || {
        ctl.controller
            .nodes()
            .unwrap()
            .first()
            .and_then(|v| v.last_report.clone())
            .is_some_and(|(_, r)| {
                r.applied_revision == 1
                    && r.artifacts.len() == 2
                    && r.artifacts.iter().all(|a| a.state == "installed")
            })
    })
    .await;
    assert_eq!(
        std::fs::read(agent.root_path("/usr/local/bin/tool")).unwrap(),
        tool
    );
    assert_eq!(
        std::fs::read(agent.root_path("/usr/local/bin/etcd")).unwrap(),
        b"#!/bin/sh\necho etcd\n"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(agent.root_path("/usr/local/bin/etcd"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o755);
    let report = ctl.controller.nodes().unwrap()[0]
        .last_report
        .clone()
        .unwrap()
        .1;
    assert!(
        report
            .artifacts
            .iter()
            .all(|a| a.url.starts_with("pangaea-mirror:")),
        "{:?}",
        report.artifacts
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_serves_from_an_offset_and_refuses_unknown_or_anonymous_requests() {
    let ctl = TestController::start().await;
    let src = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(src.path().join("blob"), &blob).unwrap();
    let [entry, _] = ctl
        .controller
        .mirror()
        .import(&src.path().join("blob"))
        .await
        .unwrap();
    assert_eq!(entry.size, blob.len() as u64);
    assert_eq!(
        Digest::of_file(DigestKind::Sha256, &src.path().join("blob"))
            .unwrap()
            .to_string(),
        entry.digest
    );

    // Join a node by hand to get a client certificate.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node-1");
    let csr_der = params.serialize_request(&key).unwrap().der().to_vec();
    let channel = pangaea_core::tls::channel(
        &ctl.endpoint(),
        pangaea_agent::identity::pinned_config(ctl.controller.pki().controller_pin()),
    )
    .unwrap();
    let facts = pb::NodeFacts {
        instance_id: "i-1".into(),
        hostname: "node-1".into(),
        addresses: vec![],
        boot_id: String::new(),
    };
    let cert = pb::enrollment_client::EnrollmentClient::new(channel)
        .join(pb::JoinRequest {
            token: ctl.token(None).await,
            csr_der,
            node_name: "node-1".into(),
            facts: Some(facts),
        })
        .await
        .unwrap()
        .into_inner()
        .certificate_pem;
    let mut client = mtls_client(&ctl, &key.serialize_pem(), &cert);

    let mut stream = client
        .fetch_artifact(pb::FetchArtifactRequest {
            digest: entry.digest.clone(),
            offset: 600_000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let mut first_offset = None;
    while let Some(c) = stream.message().await.unwrap() {
        first_offset.get_or_insert(c.offset);
        assert_eq!(c.total_size, blob.len() as u64);
        got.extend(c.data);
    }
    assert_eq!(first_offset, Some(600_000));
    assert_eq!(got, blob[600_000..]);

    let missing = format!("sha256:{}", "0".repeat(64));
    let s = client
        .fetch_artifact(pb::FetchArtifactRequest {
            digest: missing,
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");
    let s = client
        .fetch_artifact(pb::FetchArtifactRequest {
            digest: "sha256:../../etc/passwd".into(),
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    let s = client
        .fetch_artifact(pb::FetchArtifactRequest {
            digest: entry.digest.clone(),
            offset: 2_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");

    let anonymous = pangaea_core::tls::channel(
        &ctl.endpoint(),
        pangaea_agent::identity::pinned_config(ctl.controller.pki().controller_pin()),
    )
    .unwrap();
    let s = pb::node_service_client::NodeServiceClient::new(anonymous)
        .fetch_artifact(pb::FetchArtifactRequest {
            digest: entry.digest,
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
}
