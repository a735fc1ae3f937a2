//! Bad input and attacks: each is refused with a clear error, logged, and changes nothing in
//! the controller's state.

use pangaea_controller::rules;
use pangaea_controller::tokens::NewToken;
use pangaea_core::tls;
use pangaea_proto as pb;
use pangaea_tests::{TestAgent, TestController, mtls_client};
use rcgen::{CertificateParams, DnType, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};
use std::time::Duration;
use tonic::Code;

/// Everything a refusal must leave untouched.
fn snapshot(ctl: &TestController) -> String {
    let tokens = ctl.controller.tokens().unwrap();
    let nodes: Vec<_> = ctl
        .controller
        .nodes()
        .unwrap()
        .into_iter()
        .map(|v| (v.record, v.assigned_revision))
        .collect();
    format!("{tokens:?}\n{nodes:?}")
}

fn csr(name: &str) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    (key, der)
}

fn facts(instance: &str) -> pb::NodeFacts {
    pb::NodeFacts {
        instance_id: instance.into(),
        hostname: "h".into(),
        addresses: vec!["192.0.2.10".into()],
        boot_id: "b".into(),
    }
}

fn enrollment(
    ctl: &TestController,
) -> pb::enrollment_client::EnrollmentClient<tonic::transport::Channel> {
    let ch = tls::channel(
        &ctl.endpoint(),
        pangaea_agent::identity::pinned_config(ctl.controller.pki().controller_pin()),
    )
    .unwrap();
    pb::enrollment_client::EnrollmentClient::new(ch)
}

/// Joins as `name` and returns the node's key and certificate.
async fn join(
    ctl: &TestController,
    name: &str,
    instance: &str,
    token: &str,
) -> Result<(String, String), tonic::Status> {
    let (key, csr_der) = csr(name);
    let resp = enrollment(ctl)
        .join(pb::JoinRequest {
            token: token.into(),
            csr_der,
            node_name: name.into(),
            facts: Some(facts(instance)),
        })
        .await?;
    Ok((key.serialize_pem(), resp.into_inner().certificate_pem))
}

fn anonymous_client(
    ctl: &TestController,
) -> pb::node_service_client::NodeServiceClient<tonic::transport::Channel> {
    let ch = tls::channel(
        &ctl.endpoint(),
        pangaea_agent::identity::pinned_config(ctl.controller.pki().controller_pin()),
    )
    .unwrap();
    pb::node_service_client::NodeServiceClient::new(ch)
}

#[track_caller]
fn assert_refused(r: Result<(String, String), tonic::Status>, code: Code, needle: &str) {
    let s = r.expect_err("must be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(needle),
        "message {:?} should mention {needle:?}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_csrs_and_names_are_refused_and_change_nothing() {
    let ctl = TestController::start().await;
    let used = ctl.token(None).await;
    join(&ctl, "node-a", "i-a", &used)
        .await
        .expect("first use of a token admits the node");
    let expired = ctl
        .controller
        .create_token(NewToken {
            ttl: Duration::ZERO,
            ..Default::default()
        })
        .await
        .unwrap()
        .0
        .expose();
    let revoked = ctl.token(None).await;
    ctl.controller
        .revoke_token(revoked[..6].to_owned())
        .await
        .unwrap();
    let bound = ctl.token(Some("node-x")).await;
    let good = ctl.token(None).await;
    let wrong_secret = format!("{}.{}", &good[..6], "0000000000000000");

    let before = snapshot(&ctl);
    assert_refused(
        join(&ctl, "node-b", "i-b", &used).await,
        Code::PermissionDenied,
        "used up",
    );
    assert_refused(
        join(&ctl, "node-b", "i-b", &expired).await,
        Code::PermissionDenied,
        "expired",
    );
    assert_refused(
        join(&ctl, "node-b", "i-b", &revoked).await,
        Code::PermissionDenied,
        "revoked",
    );
    assert_refused(
        join(&ctl, "node-b", "i-b", &bound).await,
        Code::PermissionDenied,
        "bound to node \"node-x\"",
    );
    assert_refused(
        join(&ctl, "node-b", "i-b", &wrong_secret).await,
        Code::PermissionDenied,
        "wrong secret",
    );
    // Hardening #6: an unknown token and a wrong secret read alike to the caller, so
    // token ids cannot be probed.
    let unknown = format!("zzzzzz.{}", wrong_secret.split_once('.').unwrap().1);
    let (a, b) = (
        join(&ctl, "node-b", "i-b", &wrong_secret)
            .await
            .unwrap_err(),
        join(&ctl, "node-b", "i-b", &unknown).await.unwrap_err(),
    );
    let id = wrong_secret.split_once('.').unwrap().0;
    assert_eq!(a.code(), b.code());
    assert_eq!(
        a.message().replace(id, "ID"),
        b.message().replace("zzzzzz", "ID")
    );
    assert_refused(
        join(&ctl, "node-b", "i-b", "not-a-token").await,
        Code::InvalidArgument,
        "malformed bootstrap token",
    );
    assert_refused(
        join(&ctl, "Node_B", "i-b", &good).await,
        Code::InvalidArgument,
        "invalid node name",
    );
    assert_refused(
        join(&ctl, "node-b", "", &good).await,
        Code::InvalidArgument,
        "instance ID",
    );
    // Another machine claiming an existing node's name with an unbound token.
    assert_refused(
        join(&ctl, "node-a", "i-impostor", &good).await,
        Code::AlreadyExists,
        "belongs to instance \"i-a\"",
    );

    let bad_csr = enrollment(&ctl)
        .join(pb::JoinRequest {
            token: good.clone(),
            csr_der: b"garbage".to_vec(),
            node_name: "node-b".into(),
            facts: Some(facts("i-b")),
        })
        .await;
    let s = bad_csr.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("certificate signing request"),
        "{}",
        s.message()
    );

    let huge = enrollment(&ctl)
        .join(pb::JoinRequest {
            token: good.clone(),
            csr_der: vec![7; 2 * 1024 * 1024],
            node_name: "node-b".into(),
            facts: Some(facts("i-b")),
        })
        .await;
    let s = huge.unwrap_err();
    assert!(
        matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted),
        "oversized message: {s:?}"
    );

    assert_eq!(
        snapshot(&ctl),
        before,
        "a refused request must not change the state"
    );
    // And the good token still works afterwards.
    join(&ctl, "node-b", "i-b", &good).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_calls_need_a_valid_current_certificate_and_see_only_their_own_assignment() {
    let ctl = TestController::start().await;
    let (key_a, cert_a) = join(&ctl, "node-a", "i-a", &ctl.token(None).await)
        .await
        .unwrap();
    join(&ctl, "node-b", "i-b", &ctl.token(None).await)
        .await
        .unwrap();
    let before = snapshot(&ctl);

    // No client certificate.
    let s = anonymous_client(&ctl)
        .report(pb::HealthReport::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(
        s.message().contains("client certificate"),
        "{}",
        s.message()
    );

    // A certificate from another CA for the same name: the TLS handshake fails.
    let rogue_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut rogue_ca = CertificateParams::default();
    rogue_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue = Issuer::new(rogue_ca, rogue_key);
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::new(vec!["node-a".into()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "node-a");
    let forged = leaf.signed_by(&leaf_key, &rogue).unwrap().pem();
    let s = mtls_client(&ctl, &leaf_key.serialize_pem(), &forged)
        .report(pb::HealthReport::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{s:?}"
    );

    // An expired certificate from the right CA: refused by the handshake.
    let pki_dir = ctl.dir.path().join(".pangaea/pki");
    let ca = Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(pki_dir.join("controller-ca.crt")).unwrap(),
        KeyPair::from_pem(&std::fs::read_to_string(pki_dir.join("controller-ca.key")).unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut old = CertificateParams::new(vec!["node-a".into()]).unwrap();
    old.distinguished_name.push(DnType::CommonName, "node-a");
    old.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(2 * 86400);
    old.not_after = time::OffsetDateTime::now_utc() - Duration::from_secs(86400);
    let expired = old.signed_by(&leaf_key, &ca).unwrap().pem();
    let s = mtls_client(&ctl, &leaf_key.serialize_pem(), &expired)
        .report(pb::HealthReport::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{s:?}"
    );

    // A valid certificate from the right CA that the controller never issued to this node.
    let unknown = CertificateParams::new(vec!["node-a".into()]).map(|mut p| {
        p.distinguished_name.push(DnType::CommonName, "node-a");
        p
    });
    let unlisted = unknown.unwrap().signed_by(&leaf_key, &ca).unwrap().pem();
    let s = mtls_client(&ctl, &leaf_key.serialize_pem(), &unlisted)
        .report(pb::HealthReport::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // Node A asking for node B's assignment.
    let mut a = mtls_client(&ctl, &key_a, &cert_a);
    let s = a
        .watch_assignment(pb::WatchRequest {
            node_name: "node-b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("only its own"), "{}", s.message());
    assert_eq!(snapshot(&ctl), before);

    // Its own assignment is fine, and reports land.
    let first = a
        .watch_assignment(pb::WatchRequest {
            node_name: "node-a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.node_name, "node-a");
    a.report(pb::HealthReport {
        applied_revision: first.revision,
        ..Default::default()
    })
    .await
    .unwrap();

    // Removal revokes at once.
    rules::remove(&ctl.controller, "node-a").await.unwrap();
    let s = a.report(pb::HealthReport::default()).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("removed"), "{}", s.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_controller_that_does_not_match_its_pin() {
    let ctl = TestController::start().await;
    let token = ctl.token(None).await;
    let (dir, mut cfg) = ctl.agent_config("node-a", &token);
    cfg.ca_pin = pangaea_core::pin::SpkiPin::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
    let err = pangaea_agent::identity::join(&cfg)
        .await
        .err()
        .expect("join must fail")
        .to_string();
    assert!(err.contains("pin"), "{err}");
    assert!(
        cfg.token_file.exists(),
        "the token stays for a later attempt"
    );
    assert_eq!(
        ctl.controller.tokens().unwrap()[0].uses_left,
        1,
        "the token was not spent"
    );
    assert!(ctl.controller.nodes().unwrap().is_empty());

    // With the right pin the same token works.
    cfg.ca_pin = ctl.controller.pki().controller_pin();
    let agent = TestAgent::spawn(dir, cfg);
    pangaea_tests::eventually("node joins", Duration::from_secs(20), || {
        ctl.controller.nodes().unwrap().len() == 1
    })
    .await;
    agent.shutdown().await;
}

/// Planning renders templates and writes cluster secrets; when a secret cannot be stored,
/// the join is refused with an error naming it, nothing is written, and the store keeps
/// working for everything else (planning runs outside the store's shared writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_that_cannot_store_a_secret_refuses_the_join_and_breaks_nothing() {
    // `secrets` is a file, so `secrets/encryption-key` cannot be written.
    let ctl = TestController::start_compiled(|state| {
        std::fs::write(state.join("secrets"), "not a directory").unwrap();
    })
    .await;
    let token = ctl.token(Some("node-1")).await;
    let before = snapshot(&ctl);
    let err = join(&ctl, "node-1", "i-1", &token)
        .await
        .expect_err("the plan fails");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("cannot plan node node-1")
            && err.message().contains("encryption-key"),
        "the error names the node and the secret: {}",
        err.message()
    );
    assert_eq!(snapshot(&ctl), before, "a refused join writes nothing");

    // Later writes still succeed: a token, then the same join once the secret can be stored.
    let other = ctl
        .controller
        .create_token(NewToken::default())
        .await
        .expect("the store still takes writes");
    assert!(!other.0.expose().is_empty());
    std::fs::remove_file(ctl.dir.path().join(".pangaea/secrets")).unwrap();
    join(&ctl, "node-1", "i-1", &token)
        .await
        .expect("the unspent token joins once the secret can be stored");
    assert!(ctl.controller.node("node-1").unwrap().is_some());
}

/// Waits until the watch stream `s` ends (closed or failed), failing after 5 s.
async fn ends(mut s: tonic::Streaming<pb::Assignment>, what: &str) {
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "{what}: the watch stream is still open");
}

async fn watch(
    ctl: &TestController,
    node: &str,
    key: &str,
    cert: &str,
) -> Result<tonic::Streaming<pb::Assignment>, tonic::Status> {
    let mut c = mtls_client(ctl, key, cert);
    Ok(c.watch_assignment(pb::WatchRequest {
        node_name: node.into(),
    })
    .await?
    .into_inner())
}

/// Hardening #4: a node's watch stream ends when the node is replaced by another instance
/// or removed, so a revoked incarnation never receives another assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_ends_when_its_node_is_replaced_or_removed() {
    let ctl = TestController::start().await;
    let (key1, cert1) = join(&ctl, "node-a", "i-1", &ctl.token(None).await)
        .await
        .unwrap();
    let mut first = watch(&ctl, "node-a", &key1, &cert1).await.unwrap();
    assert!(first.message().await.unwrap().is_some(), "the assignment");

    // A replacement (the operator's token bound to the name, another instance).
    let bound = ctl.token(Some("node-a")).await;
    let (key2, cert2) = join(&ctl, "node-a", "i-2", &bound).await.unwrap();
    ends(first, "after the replacement").await;
    let s = watch(&ctl, "node-a", &key1, &cert1).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // The replacement's own stream, until the node is removed.
    let second = watch(&ctl, "node-a", &key2, &cert2).await.unwrap();
    rules::remove(&ctl.controller, "node-a").await.unwrap();
    ends(second, "after the removal").await;
}

/// Hardening #4, the interleaving: watches racing a removal either are refused or end;
/// none stays open (a removal committed between a watch's check and its subscription is
/// caught by the check after subscribing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_racing_a_removal_all_end() {
    let ctl = TestController::start().await;
    let (key, cert) = join(&ctl, "node-b", "i-b", &ctl.token(None).await)
        .await
        .unwrap();
    let mut calls = Vec::new();
    for _ in 0..40 {
        let (ctl_key, ctl_cert) = (key.clone(), cert.clone());
        let client = mtls_client(&ctl, &ctl_key, &ctl_cert);
        calls.push(tokio::spawn(async move {
            let mut c = client;
            c.watch_assignment(pb::WatchRequest {
                node_name: "node-b".into(),
            })
            .await
            .map(|r| r.into_inner())
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    rules::remove(&ctl.controller, "node-b").await.unwrap();
    let (mut refused, mut ended) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Err(s) => {
                assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
                refused += 1;
            }
            Ok(stream) => {
                ends(stream, "a watch racing the removal").await;
                ended += 1;
            }
        }
    }
    assert_eq!(refused + ended, 40);
}

/// Hardening #10: lost renewal replies never lock a node out. The agent keeps using the
/// certificate it has until a renewal reply reaches it; renewals whose replies were lost
/// lapse, the presented certificate does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_renewal_replies_never_lock_a_node_out() {
    let ctl = TestController::start().await;
    let (key_a, cert_a) = join(&ctl, "node-r", "i-r", &ctl.token(None).await)
        .await
        .unwrap();
    let mut a = mtls_client(&ctl, &key_a, &cert_a);
    let renew = async |client: &mut pb::node_service_client::NodeServiceClient<_>| {
        let (key, csr_der) = csr("node-r");
        let cert = client
            .renew(pb::RenewRequest { csr_der })
            .await
            .unwrap()
            .into_inner()
            .certificate_pem;
        (key.serialize_pem(), cert)
    };
    // Two renewals whose replies are lost: the agent goes on with A.
    let (key_b, cert_b) = renew(&mut a).await;
    let _lost_too = renew(&mut a).await;
    a.report(pb::HealthReport::default())
        .await
        .expect("the certificate in use still works after lost renewals");
    // The third reply arrives, and the agent switches to it.
    let (key_d, cert_d) = renew(&mut a).await;
    mtls_client(&ctl, &key_d, &cert_d)
        .report(pb::HealthReport::default())
        .await
        .expect("the renewed certificate works");
    let s = mtls_client(&ctl, &key_b, &cert_b)
        .report(pb::HealthReport::default())
        .await
        .unwrap_err();
    assert_eq!(
        s.code(),
        Code::PermissionDenied,
        "a lost renewal lapses: {s:?}"
    );
}

/// The content of `path` in node `node`'s current assignment, read through its own stream.
async fn assigned_file(
    ctl: &TestController,
    node: &str,
    key: &str,
    cert: &str,
    path: &str,
) -> Vec<u8> {
    let a = watch(ctl, node, key, cert)
        .await
        .unwrap()
        .message()
        .await
        .unwrap()
        .expect("an assignment");
    a.files
        .into_iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} is not in {node}'s assignment"))
        .content
}

/// Hardening #3 (replacement keys): a node that replaces another of the same name gets new
/// keys and serials for its cluster certificates, never its predecessor's; the same
/// instance joining again keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_node_gets_new_keys_never_its_predecessors() {
    let ctl = TestController::start_compiled(|_| {}).await;
    const KEY: &str = "/etc/etcd/pki/peer.key";
    let (k1, c1) = join(&ctl, "node-1", "i-1", &ctl.token(None).await)
        .await
        .unwrap();
    let first = assigned_file(&ctl, "node-1", &k1, &c1, KEY).await;
    // The same instance again (its identity lost): the same keys, no needless restart.
    let (k2, c2) = join(&ctl, "node-1", "i-1", &ctl.token(Some("node-1")).await)
        .await
        .unwrap();
    assert_eq!(assigned_file(&ctl, "node-1", &k2, &c2, KEY).await, first);
    // Another instance takes the name.
    let (k3, c3) = join(&ctl, "node-1", "i-2", &ctl.token(Some("node-1")).await)
        .await
        .unwrap();
    let replaced = assigned_file(&ctl, "node-1", &k3, &c3, KEY).await;
    assert_ne!(
        replaced, first,
        "the replacement got its predecessor's etcd key"
    );
    // And after a removal too.
    rules::remove(&ctl.controller, "node-1").await.unwrap();
    let (k4, c4) = join(&ctl, "node-1", "i-3", &ctl.token(None).await)
        .await
        .unwrap();
    let again = assigned_file(&ctl, "node-1", &k4, &c4, KEY).await;
    assert!(again != replaced && again != first);
}

/// Hardening #5: an instance ID is not a secret. An unbound token presented with a live
/// node's name and instance ID is refused; only a token the operator bound to the name
/// re-joins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_token_with_a_live_nodes_instance_id_is_refused() {
    let ctl = TestController::start().await;
    join(&ctl, "node-v", "i-v", &ctl.token(None).await)
        .await
        .unwrap();
    let before = snapshot(&ctl);
    let stolen = ctl.token(None).await;
    let before_tokens = snapshot(&ctl);
    assert_refused(
        join(&ctl, "node-v", "i-v", &stolen).await,
        Code::AlreadyExists,
        "belongs to instance",
    );
    assert_eq!(snapshot(&ctl), before_tokens, "the refusal wrote nothing");
    assert_ne!(before, before_tokens, "(the new token itself was recorded)");
    join(&ctl, "node-v", "i-v", &ctl.token(Some("node-v")).await)
        .await
        .expect("a token bound to the name re-joins it");
}

/// Hardening #10 (lost join reply): the same join sent again — same token, CSR and instance
/// — is admitted once more, so a lost reply does not strand a node whose single-use token it
/// spent; any other join with the spent token is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_reply_was_lost_can_be_sent_again() {
    let ctl = TestController::start().await;
    let token = ctl.token(None).await;
    let (key, csr_der) = csr("node-j");
    let send = |csr_der: Vec<u8>, instance: &'static str| {
        let mut e = enrollment(&ctl);
        let token = token.clone();
        async move {
            e.join(pb::JoinRequest {
                token,
                csr_der,
                node_name: "node-j".into(),
                facts: Some(facts(instance)),
            })
            .await
            .map(|r| r.into_inner().certificate_pem)
        }
    };
    let _lost = send(csr_der.clone(), "i-j").await.expect("the first join");
    let again = send(csr_der.clone(), "i-j")
        .await
        .expect("the same join again is admitted");
    mtls_client(&ctl, &key.serialize_pem(), &again)
        .report(pb::HealthReport::default())
        .await
        .expect("the certificate from the repeated join works");
    assert_eq!(ctl.controller.tokens().unwrap()[0].uses_left, 0);
    // Another key, or another instance, with the spent token: refused.
    let (_, other_csr) = csr("node-j");
    let s = send(other_csr, "i-j").await.unwrap_err();
    assert!(s.message().contains("used up"), "{s:?}");
    let s = send(csr_der, "i-x").await.unwrap_err();
    assert!(s.message().contains("used up"), "{s:?}");
}

/// Hardening #6 (idle connections): hundreds of idle TCP connections held open against the
/// gRPC port do not keep a legitimate join and renewal from completing within 5 s (each
/// handshake runs on its own and times out; none holds the accept loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_block_a_join_or_a_renewal() {
    let ctl = TestController::start().await;
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(tokio::net::TcpStream::connect(ctl.addr).await.unwrap());
    }
    let token = ctl.token(None).await;
    let started = std::time::Instant::now();
    let (key, cert) =
        tokio::time::timeout(Duration::from_secs(5), join(&ctl, "node-f", "i-f", &token))
            .await
            .expect("a join within 5 s")
            .unwrap();
    let (_, csr_der) = csr("node-f");
    tokio::time::timeout(
        Duration::from_secs(5),
        mtls_client(&ctl, &key, &cert).renew(pb::RenewRequest { csr_der }),
    )
    .await
    .expect("a renewal within 5 s")
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);
}

/// Hardening #3 (rotation): a node's cluster certificate nearing the end of its life is
/// issued again by the controller's rotation loop and delivered through the node's watch
/// stream, with no operator action. (Lifetimes of seconds here; 30 days in a cluster.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_near_its_end_is_reissued_and_delivered_without_operator_action() {
    let ctl = TestController::start_compiled_rotating(
        |_| {},
        Some((
            Duration::from_secs(6),
            rules::Rotation {
                every: Duration::from_millis(300),
                settle_timeout: Duration::from_secs(1),
            },
        )),
    )
    .await;
    const CERT: &str = "/etc/etcd/pki/peer.crt";
    let (key, cert) = join(&ctl, "node-1", "i-1", &ctl.token(None).await)
        .await
        .unwrap();
    let mut stream = watch(&ctl, "node-1", &key, &cert).await.unwrap();
    let first = stream.message().await.unwrap().expect("an assignment");
    let file = |a: &pb::Assignment| {
        a.files
            .iter()
            .find(|f| f.path == CERT)
            .map(|f| String::from_utf8(f.content.clone()).unwrap())
            .expect("the etcd peer certificate")
    };
    let expiry = |pem: &str| {
        pangaea_core::x509::CertInfo::from_pem(pem)
            .unwrap()
            .not_after
    };
    let old = file(&first);
    let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a new assignment within 20 s")
        .unwrap()
        .expect("the stream stays open");
    assert!(next.revision > first.revision);
    let new = file(&next);
    assert_ne!(new, old, "the certificate was issued again");
    assert!(expiry(&new) > expiry(&old), "with a later expiry");
}

/// Hardening #6 (flood): one client flooding the gRPC port with oversized join requests on
/// one connection gets them refused, and a legitimate join on another connection still
/// completes within 5 s (requests per connection are bounded; oversized bodies are refused
/// before they are decoded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_oversized_joins_does_not_starve_a_legitimate_one() {
    let ctl = TestController::start().await;
    let flooder = enrollment(&ctl);
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut c = flooder.clone();
        flood.push(tokio::spawn(async move {
            c.join(pb::JoinRequest {
                token: "abcdef.0123456789abcdef".into(),
                csr_der: vec![0u8; 512 * 1024],
                node_name: "node-z".into(),
                facts: Some(facts("i-z")),
            })
            .await
        }));
    }
    let token = ctl.token(None).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), join(&ctl, "node-l", "i-l", &token))
        .await
        .expect("a legitimate join within 5 s")
        .expect("admitted");
    assert!(started.elapsed() < Duration::from_secs(5));
    for f in flood {
        let r = f.await.unwrap();
        assert!(r.is_err(), "an oversized join must be refused");
    }
    assert!(ctl.controller.node("node-z").unwrap().is_none());
}
