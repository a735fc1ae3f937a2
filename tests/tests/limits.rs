//! Hardening #6, bounded resources: a request that does not arrive is cut after the request
//! timeout while watch and download streams outlive it, and downloads are served a bounded
//! number at a time. (Idle connections and floods of oversized requests: `refusals.rs`;
//! the connection and handshake caps: `core/src/tls.rs`; figures under load:
//! `bench-flood` and `bench-storm`.)

use pangaea_core::tls;
use pangaea_proto as pb;
use pangaea_tests::{TestController, mtls_channel, mtls_client};
use std::time::{Duration, Instant};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(1);

fn csr(name: &str) -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    (key, der)
}

fn anonymous_channel(ctl: &TestController) -> tonic::transport::Channel {
    tls::channel(
        &ctl.endpoint(),
        pangaea_agent::identity::pinned_config(ctl.controller.pki().controller_pin()),
    )
    .unwrap()
}

/// Joins `name` and returns its key and certificate.
async fn join(ctl: &TestController, name: &str) -> (String, String) {
    let (key, csr_der) = csr(name);
    let resp = pb::enrollment_client::EnrollmentClient::new(anonymous_channel(ctl))
        .join(pb::JoinRequest {
            token: ctl.token(None).await,
            csr_der,
            node_name: name.into(),
            facts: Some(pb::NodeFacts {
                instance_id: format!("i-{name}"),
                hostname: name.into(),
                addresses: vec!["192.0.2.10".into()],
                boot_id: String::new(),
            }),
        })
        .await
        .unwrap();
    (key.serialize_pem(), resp.into_inner().certificate_pem)
}

/// Calls the unary method `path` with request headers but a body that never comes (a
/// slow-loris client), returning the status it ends with and when.
async fn stalled_call<M: prost::Message + Default + Send + 'static>(
    channel: tonic::transport::Channel,
    path: &'static str,
) -> (tonic::Status, Duration) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let started = Instant::now();
    let never = tokio_stream::pending::<M>();
    let r = grpc
        .client_streaming::<_, M, pb::ReportAck, _>(
            tonic::Request::new(never),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    (
        r.expect_err("a call without a body cannot succeed"),
        started.elapsed(),
    )
}

/// Hardening #6 (request timeout): a join or a report whose body never arrives is ended by
/// the controller after the request timeout; a watch stream and a download stay open past
/// it and keep delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_are_cut_after_the_timeout_and_streams_are_not() {
    let ctl = TestController::start_with(|c| c.limits.request_timeout = TIMEOUT).await;
    let (key, cert) = join(&ctl, "node-t").await;

    for (what, ended) in [
        (
            "join",
            tokio::time::timeout(
                Duration::from_secs(5),
                stalled_call::<pb::JoinRequest>(
                    anonymous_channel(&ctl),
                    "/pangaea.v1.Enrollment/Join",
                ),
            )
            .await,
        ),
        (
            "report",
            tokio::time::timeout(
                Duration::from_secs(5),
                stalled_call::<pb::HealthReport>(
                    mtls_channel(&ctl, &key, &cert),
                    "/pangaea.v1.NodeService/Report",
                ),
            )
            .await,
        ),
    ] {
        let (status, after) =
            ended.unwrap_or_else(|_| panic!("a stalled {what} is still open after 5 s"));
        assert_eq!(status.code(), Code::Cancelled, "{what}: {status:?}");
        assert!(
            after >= TIMEOUT,
            "{what} ended after {after:?}, before the timeout"
        );
    }

    // A watch stream opened now still delivers a new assignment after twice the timeout.
    let mut client = mtls_client(&ctl, &key, &cert);
    let mut watch = client
        .watch_assignment(pb::WatchRequest {
            node_name: "node-t".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("the assignment");
    // A download of an artifact read slowly: a chunk now, the rest after the timeout.
    let dir = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("blob"), &blob).unwrap();
    let digest = ctl
        .controller
        .mirror()
        .import(&dir.path().join("blob"))
        .await
        .unwrap()[0]
        .digest
        .clone();
    let mut download = client
        .fetch_artifact(pb::FetchArtifactRequest { digest, offset: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut got = download
        .message()
        .await
        .unwrap()
        .expect("a first chunk")
        .data;

    // The point of the test is time passing, not waiting for an event.
    tokio::time::sleep(TIMEOUT * 2).await;

    ctl.planner.set(
        "node-t",
        pangaea_controller::assign::Plan {
            files: vec![pangaea_tests::file("/etc/later", "x")],
            ..Default::default()
        },
    );
    pangaea_controller::rules::replan(&ctl.controller, "node-t")
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watch stream delivers")
        .expect("the watch stream is still open")
        .expect("a new assignment");
    assert!(next.revision > first.revision);
    while let Some(chunk) = download
        .message()
        .await
        .expect("the download is still open")
    {
        assert_eq!(chunk.offset as usize, got.len());
        got.extend_from_slice(&chunk.data);
    }
    assert!(got == blob, "the whole artifact, in order");
}

/// Hardening #6 (downloads): at most `max_downloads` artifact downloads are served at once;
/// one more is answered RESOURCE_EXHAUSTED, and a download its client abandons frees its
/// slot. A download resumed at an offset gets the rest of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_bounded_and_an_abandoned_one_frees_its_slot() {
    let ctl = TestController::start_with(|c| c.limits.max_downloads = 2).await;
    let (key, cert) = join(&ctl, "node-d").await;
    let dir = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.path().join("blob"), &blob).unwrap();
    let digest = ctl
        .controller
        .mirror()
        .import(&dir.path().join("blob"))
        .await
        .unwrap()[0]
        .digest
        .clone();
    let client = mtls_client(&ctl, &key, &cert);
    let fetch = |offset: u64| {
        let (mut c, digest) = (client.clone(), digest.clone());
        async move {
            c.fetch_artifact(pb::FetchArtifactRequest { digest, offset })
                .await
                .map(|r| r.into_inner())
        }
    };
    // Two downloads, each read one chunk and then left alone by their (slow) clients.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = fetch(0).await.unwrap();
        s.message().await.unwrap().expect("a first chunk");
        held.push(s);
    }
    let s = fetch(0).await.expect_err("a third download at once");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains("maximum of 2 downloads"),
        "{}",
        s.message()
    );

    // Abandoning one frees its slot (the server learns it from the stream's reset).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut resumed = loop {
        match fetch(1_000_000).await {
            Ok(s) => break s,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(s) => panic!("the abandoned download's slot was not freed: {s:?}"),
        }
    };
    let mut got = Vec::new();
    while let Some(c) = resumed.message().await.unwrap() {
        assert_eq!(c.offset as usize, 1_000_000 + got.len());
        assert_eq!(c.total_size, blob.len() as u64);
        got.extend_from_slice(&c.data);
    }
    assert!(
        got == blob[1_000_000..],
        "the rest of the artifact from the offset"
    );
}

/// Hardening #6 (file descriptors): `pangaea-ctl serve` started with a soft limit of 512
/// open files raises it to the hard limit before it serves.
#[test]
fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".pangaea");
    let mut serve = std::process::Command::new("sh")
        .args(["-c", "ulimit -Sn 512 && exec \"$0\" \"$@\""])
        .arg(pangaea_tests::binary("pangaea-ctl"))
        .arg("--state-dir")
        .arg(&state)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = serve.id();
    pangaea_tests::poll_until(
        "serve.addr",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            assert!(
                serve.try_wait().unwrap().is_none(),
                "pangaea-ctl serve exited"
            );
            state.join("serve.addr").exists().then_some(())
        },
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    serve.wait().unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "the soft limit was raised: {line}");
    assert_ne!(soft, "512", "{line}");
}
