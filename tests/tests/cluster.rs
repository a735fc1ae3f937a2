//! One controller and three agents in-process on loopback: all join, pull, apply and
//! report; assignment changes reach only the nodes they concern and restart only the units
//! whose files changed; agents survive a controller restart and a reboot.

use pangaea_controller::assign::Plan;
use pangaea_tests::{TestAgent, TestController, eventually, file, unit};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn healthy(ctl: &TestController, n: usize) -> bool {
    let now = pangaea_controller::records::now();
    let nodes = ctl.controller.nodes().unwrap();
    nodes.len() == n
        && nodes.iter().all(|v| match &v.last_report {
            Some((at, r)) => {
                r.applied_revision == v.assigned_revision
                    && v.assigned_revision > 0
                    && now - at < 10
                    && r.errors.is_empty()
                    && r.units.iter().all(|u| u.active_state == "active")
            }
            None => false,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_join_apply_report_and_follow_changes() {
    let ctl = TestController::start().await;
    for n in ["node-1", "node-2", "node-3"] {
        ctl.planner.set(
            n,
            Plan {
                files: vec![
                    file(
                        "/etc/systemd/system/etcd.service",
                        "[Service]\nExecStart=sleep infinity\n",
                    ),
                    file("/etc/etcd.conf", "v1"),
                ],
                units: vec![unit("etcd.service", &["/etc/etcd.conf"])],
                ..Default::default()
            },
        );
    }
    let mut agents = Vec::new();
    for n in ["node-1", "node-2", "node-3"] {
        let (dir, cfg) = ctl.agent_config(n, &ctl.token(None).await);
        agents.push(TestAgent::spawn(dir, cfg));
    }
    eventually("three healthy nodes", T, || healthy(&ctl, 3)).await;
    for a in &agents {
        assert_eq!(
            std::fs::read_to_string(a.root_path("/etc/etcd.conf")).unwrap(),
            "v1"
        );
        assert!(
            !a.cfg.token_file.exists(),
            "the bootstrap token must be gone from the node after joining"
        );
        assert!(
            a.units
                .calls()
                .contains(&"start etcd.service --enable".to_owned())
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(a.cfg.state_dir.join("identity.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    // Change one node's config: only that node gets a new revision and restarts etcd.
    ctl.planner.set(
        "node-2",
        Plan {
            files: vec![
                file(
                    "/etc/systemd/system/etcd.service",
                    "[Service]\nExecStart=sleep infinity\n",
                ),
                file("/etc/etcd.conf", "v2"),
            ],
            units: vec![unit("etcd.service", &["/etc/etcd.conf"])],
            ..Default::default()
        },
    );
    for n in ["node-1", "node-2", "node-3"] {
        pangaea_controller::rules::replan(&ctl.controller, n)
            .await
            .unwrap();
    }
    eventually("node-2 applies v2", T, || {
        std::fs::read_to_string(agents[1].root_path("/etc/etcd.conf")).unwrap() == "v2"
    })
    .await;
    eventually("all healthy again", T, || healthy(&ctl, 3)).await;
    let revs: Vec<u64> = ctl
        .controller
        .nodes()
        .unwrap()
        .iter()
        .map(|v| v.assigned_revision)
        .collect();
    assert_eq!(revs, [1, 2, 1]);
    assert!(
        agents[1]
            .units
            .calls()
            .contains(&"restart etcd.service".to_owned())
    );
    assert!(
        !agents[0]
            .units
            .calls()
            .iter()
            .any(|c| c.starts_with("restart"))
    );

    // The controller goes away and comes back on the same port: agents reconnect by themselves.
    let addr = ctl.addr;
    let planner = ctl.planner.clone();
    let (dir, controller) = ctl.stop().await;
    eventually("the old controller's connections close", T, || {
        std::sync::Arc::strong_count(&controller) == 1
    })
    .await;
    drop(controller);
    let controller = pangaea_controller::Controller::open(
        pangaea_controller::ControllerConfig::new(dir.path().join(".pangaea")),
        Some(planner.clone()),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let c2 = controller.clone();
    tokio::spawn(async move {
        pangaea_controller::service::serve(&c2, listener, std::future::pending()).await
    });
    let before = controller
        .nodes()
        .unwrap()
        .iter()
        .map(|v| v.last_report.as_ref().map(|r| r.0))
        .collect::<Vec<_>>();
    eventually(
        "agents report to the restarted controller",
        Duration::from_secs(30),
        || {
            let now = controller.nodes().unwrap();
            now.iter()
                .zip(&before)
                .all(|(v, b)| v.last_report.as_ref().map(|r| r.0) > *b)
        },
    )
    .await;

    for a in agents {
        a.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_agent_reapplies_from_disk_before_the_controller_answers_and_keeps_its_identity()
{
    let ctl = TestController::start().await;
    ctl.planner.set(
        "node-1",
        Plan {
            files: vec![file("/etc/systemd/system/etcd.service", "[Service]\n")],
            units: vec![unit("etcd.service", &[])],
            ..Default::default()
        },
    );
    let (dir, cfg) = ctl.agent_config("node-1", &ctl.token(None).await);
    let agent = TestAgent::spawn(dir, cfg);
    eventually("node-1 healthy", T, || healthy(&ctl, 1)).await;
    let serial = ctl
        .controller
        .node("node-1")
        .unwrap()
        .unwrap()
        .active_serials
        .clone();
    let (dir, mut cfg) = agent.shutdown().await;

    // "Reboot" with the controller unreachable: the agent must bring its units up anyway.
    let (_keep, controller) = ctl.stop().await;
    cfg.controller = vec!["127.0.0.1:1".into()];
    let agent = TestAgent::spawn(dir, cfg);
    eventually("units started from the last applied assignment", T, || {
        agent
            .units
            .calls()
            .contains(&"start etcd.service --enable".to_owned())
    })
    .await;
    let (_dir, _cfg) = agent.shutdown().await;
    // No new join happened: same identity, same certificate.
    assert_eq!(
        controller.node("node-1").unwrap().unwrap().active_serials,
        serial
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_renew_their_certificate_at_two_thirds_of_its_lifetime() {
    let ctl = TestController::start_with(|c| c.node_cert_lifetime = Duration::from_secs(6)).await;
    let (dir, cfg) = ctl.agent_config("node-1", &ctl.token(None).await);
    let agent = TestAgent::spawn(dir, cfg);
    eventually("node-1 healthy", T, || healthy(&ctl, 1)).await;
    let first = ctl.controller.node("node-1").unwrap().unwrap();
    eventually("a renewed certificate", T, || {
        ctl.controller
            .node("node-1")
            .unwrap()
            .unwrap()
            .cert_not_after
            > first.cert_not_after
    })
    .await;
    let renewed = ctl.controller.node("node-1").unwrap().unwrap();
    assert_eq!(
        renewed.active_serials.len(),
        2,
        "old and new certificate both valid during the switch"
    );
    assert_eq!(renewed.active_serials[0], first.active_serials[0]);
    // The agent keeps working with the new certificate (the old one expires soon after).
    let reported_at = ctl.controller.nodes().unwrap()[0]
        .last_report
        .as_ref()
        .unwrap()
        .0;
    eventually("reports continue after renewal", T, || {
        ctl.controller.nodes().unwrap()[0]
            .last_report
            .as_ref()
            .unwrap()
            .0
            > reported_at + 1
    })
    .await;
    let on_disk = pangaea_agent::identity::Identity::load(&agent.cfg.state_dir)
        .unwrap()
        .unwrap();
    assert!(on_disk.not_after >= renewed.cert_not_after);
    agent.shutdown().await;
}
