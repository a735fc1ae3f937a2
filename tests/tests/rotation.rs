//! Hardening #3 (rotation, one node at a time): the controller's rotation loop re-issues the
//! cluster certificates of every node, and a node gets its new ones only once the node
//! rotated before it is healthy again, so two nodes never restart their units for a
//! rotation at once. Real agents (with a recording service manager) and the real compiler;
//! certificate lifetimes of seconds.

use pangaea_controller::rules::Rotation;
use pangaea_tests::{TestAgent, TestController};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A settle timeout well below the certificates' lifetime (12 s, re-issued 8 s after
/// issuance), as in a cluster (10 minutes against 30 days): a node that stays dark is not
/// due again by the next round.
const SETTLE: Duration = Duration::from_secs(2);

/// Hardening #3: while the rotation loop re-issues every node's certificates, at no moment
/// do two nodes have a rotated assignment not yet applied, and both are rotated. Then a
/// node that does not come back from its rotation (its agent powered off) holds the next
/// node back for the settle timeout, and no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_restarts_one_node_at_a_time() {
    let ctl = TestController::start_compiled_rotating(
        |state| {
            let disabled: String = pangaea_tests::ARTIFACTS
                .iter()
                .map(|n| format!("  - {{name: {n}, disabled: true}}\n"))
                .collect();
            let config = format!("name: rotation\nartifacts:\n{disabled}");
            std::fs::write(state.parent().unwrap().join("pangaea.yaml"), config).unwrap();
        },
        Some((
            Duration::from_secs(12),
            Rotation {
                every: Duration::from_millis(300),
                settle_timeout: SETTLE,
            },
        )),
    )
    .await;
    // node-1 joins before node-2 starts, so its certificates are never younger than
    // node-2's: each round, which visits the nodes by name, reaches node-1 first among the
    // due ones. (Started together, node-2 sometimes joined first, was rotated a round
    // before node-1, and the hold below measured nothing.)
    let mut agents = Vec::new();
    for name in ["node-1", "node-2"] {
        let (d, cfg) = ctl.agent_config(name, &ctl.token(None).await);
        agents.push(TestAgent::spawn(d, cfg));
        pangaea_tests::eventually(&format!("{name} joins"), Duration::from_secs(20), || {
            ctl.controller
                .nodes()
                .unwrap()
                .iter()
                .any(|n| n.record.name == name && n.assigned_revision > 0)
        })
        .await;
    }
    // (assigned, applied) revision of each node.
    let revisions = || -> BTreeMap<String, (u64, u64)> {
        ctl.controller
            .nodes()
            .unwrap()
            .iter()
            .map(|n| {
                let applied = n
                    .last_report
                    .as_ref()
                    .map_or(0, |(_, r)| r.applied_revision);
                (n.record.name.to_string(), (n.assigned_revision, applied))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let r = revisions();
        if r.len() == 2
            && r.values()
                .all(|(assigned, applied)| assigned == applied && *applied > 0)
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "both nodes apply their first assignment: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = revisions();
        let in_flight: Vec<_> = r.iter().filter(|(_, (a, p))| a != p).collect();
        assert!(
            in_flight.len() <= 1,
            "two nodes got rotated certificates at once: {in_flight:?}"
        );
        let rotated = r.iter().all(|(n, (_, applied))| *applied > first[n].0);
        if rotated {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both nodes rotated within 30 s: first {first:?}, now {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // node-1 goes dark; its next rotation is never applied. node-2 may still be rotated
    // before that (a certificate of its own coming due while node-1 has nothing pending):
    // what must wait is its first rotation after node-1's, for the settle timeout. So
    // node-2's revision is followed up to the last look before node-1's rotation shows.
    let _dark = agents.remove(0).power_off();
    let node_1_before = revisions()["node-1"].0;
    let mut node_2_before = revisions()["node-2"].0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let node_1_rotated = loop {
        let r = revisions();
        if r["node-1"].0 != node_1_before {
            assert_eq!(
                r["node-2"].0, node_2_before,
                "node-2 was rotated with node-1, which never came back: {r:?}"
            );
            break Instant::now();
        }
        node_2_before = r["node-2"].0;
        assert!(Instant::now() < deadline, "node-1 is rotated again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let deadline = node_1_rotated + Duration::from_secs(20);
    while revisions()["node-2"].0 == node_2_before {
        assert!(
            Instant::now() < deadline,
            "node-2 is rotated in a later round"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = node_1_rotated.elapsed();
    assert!(
        held >= SETTLE - Duration::from_millis(500),
        "node-2 was rotated {held:?} after node-1, which never came back; it must wait {SETTLE:?}"
    );
}
