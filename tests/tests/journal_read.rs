//! `pangaea-ctl logs` through the agent (`Admin/ReadJournal`), in-process: a controller
//! serving agents and the admin socket, agents whose `journalctl` is a recording fake. The
//! read runs on the named node only, with the arguments the read asks for, and its output
//! arrives whole; journalctl's refusal ends the read with its message; a node whose agent
//! is not connected is refused at once (so `logs` can take the provider's shell); and
//! another node's certificate cannot put output into the read, even knowing its job.

use pangaea_agent::command::output;
use pangaea_agent::identity::Identity;
use pangaea_controller::admin::Backend;
use pangaea_proto as pb;
use pangaea_tests::{TestAgent, TestController, eventually};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A controller with its admin socket and agents `names`, their jobs streams connected.
async fn cluster(names: &[&str]) -> (TestController, Vec<TestAgent>) {
    let ctl = TestController::start().await;
    ctl.serve_admin().await;
    let mut agents = Vec::new();
    for n in names {
        let (dir, cfg) = ctl.agent_config(n, &ctl.token(None).await);
        agents.push(TestAgent::spawn(dir, cfg));
    }
    for n in names {
        eventually(&format!("{n}'s jobs stream"), T, || {
            ctl.controller.jobs().connected(n)
        })
        .await;
    }
    (ctl, agents)
}

fn request(node: &str, units: &[&str], since: &str) -> pb::ReadJournalRequest {
    pb::ReadJournalRequest {
        node: node.into(),
        read: Some(pb::JournalRead {
            units: units.iter().map(|u| u.to_string()).collect(),
            since: since.into(),
            lines: 200,
            follow: false,
        }),
    }
}

/// Reads `req` through the running controller: the output, or the message that ended it.
async fn read(ctl: &TestController, req: pb::ReadJournalRequest) -> Result<Vec<u8>, String> {
    let mut backend = Backend::connect(&ctl.state_dir()).await.unwrap();
    let mut stream = backend
        .read_journal(req)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|why| format!("unavailable: {why}"))?;
    let mut all = Vec::new();
    loop {
        match tokio::time::timeout(T, stream.message()).await {
            Err(_) => panic!("the read neither ended nor sent anything for {T:?}"),
            Ok(Ok(Some(chunk))) => all.extend(chunk.data),
            Ok(Ok(None)) => return Ok(all),
            Ok(Err(s)) => return Err(s.message().to_owned()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_read_runs_journalctl_on_that_node_only_and_its_output_arrives_whole() {
    let (ctl, agents) = cluster(&["node-1", "node-2"]).await;
    // More than one chunk of output, with bytes that are not UTF-8.
    let mut journal: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("2026-11-23T02:00:00+0000 node-1 etcd[7]: entry {i}\n").into_bytes())
        .collect();
    journal.extend([0xff, 0xfe, b'\n']);
    let answer = journal.clone();
    agents[0].commands.answer_with(move |_| {
        Ok(std::process::Output {
            stdout: answer.clone(),
            ..output(0, "", "")
        })
    });
    let got = read(&ctl, request("node-1", &["etcd"], "-1h"))
        .await
        .unwrap();
    assert_eq!(got.len(), journal.len());
    assert!(got == journal, "the output arrived altered");
    let calls = agents[0].commands.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].program, std::path::Path::new("journalctl"));
    assert_eq!(
        calls[0].args,
        [
            "--no-pager",
            "-o",
            "short-iso",
            "--unit=etcd",
            "--since=-1h"
        ]
    );
    assert!(
        agents[1].commands.calls().is_empty(),
        "node-2 ran {:?}",
        agents[1].commands.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journalctls_refusal_ends_the_read_with_its_message() {
    let (ctl, agents) = cluster(&["node-1"]).await;
    agents[0]
        .commands
        .answer_with(|_| Ok(output(1, "", "Failed to parse timestamp: yesterdayish\n")));
    let e = read(&ctl, request("node-1", &[], "yesterdayish"))
        .await
        .unwrap_err();
    assert!(
        e.contains("node-1: journalctl failed") && e.contains("Failed to parse timestamp"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_agent_is_not_connected_is_refused_at_once_and_an_unknown_one_by_name() {
    let (ctl, mut agents) = cluster(&["node-1", "node-2"]).await;
    let _off = agents.remove(1).power_off();
    eventually("node-2's jobs stream closes", T, || {
        !ctl.controller.jobs().connected("node-2")
    })
    .await;
    let started = std::time::Instant::now();
    let e = read(&ctl, request("node-2", &[], "")).await.unwrap_err();
    assert!(
        e.starts_with("unavailable: ") && e.contains("node-2's agent is not connected"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let e = read(&ctl, request("node-9", &[], "")).await.unwrap_err();
    assert!(e.contains("no node \"node-9\""), "{e}");
}

/// The attack: node-2 learns node-1's job (as if the id leaked) and sends output for it
/// with its own certificate. Refused by the controller; the reader sees node-1's output
/// only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_nodes_certificate_cannot_put_output_into_the_read() {
    let (ctl, agents) = cluster(&["node-1", "node-2"]).await;
    // node-1's journalctl takes a moment, so the job is still running when node-2 tries.
    agents[0].commands.answer_with(|_| {
        std::thread::sleep(Duration::from_secs(2));
        Ok(output(0, "node-1's own entry\n", ""))
    });
    let identity = |a: &TestAgent| Identity::load(&a.cfg.state_dir).unwrap().unwrap();
    let node_1 = identity(&agents[0]).channel(&ctl.endpoint()).unwrap();
    let node_2 = identity(&agents[1]).channel(&ctl.endpoint()).unwrap();
    // node-1's job set, watched beside its agent: where the id leaks from.
    let mut jobs = pb::node_service_client::NodeServiceClient::new(node_1)
        .watch_jobs(pb::WatchJobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.message().await.unwrap().unwrap().jobs.is_empty());
    let reader = tokio::spawn({
        let req = request("node-1", &[], "");
        let state = ctl.state_dir();
        async move {
            let mut backend = Backend::connect(&state).await.unwrap();
            let mut stream = backend.read_journal(req).await.unwrap().unwrap();
            let mut all = Vec::new();
            while let Some(c) = stream.message().await.unwrap() {
                all.extend(c.data);
            }
            all
        }
    });
    let id = loop {
        let set = jobs.message().await.unwrap().unwrap();
        if let Some(j) = set.jobs.first() {
            break j.id.clone();
        }
    };
    let forged = tokio_stream::iter([pb::JobOutput {
        id: id.clone(),
        data: b"forged by node-2\n".to_vec(),
    }]);
    let refused = pb::node_service_client::NodeServiceClient::new(node_2)
        .send_job_output(forged)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("was not given to node \"node-2\""),
        "{refused:?}"
    );
    let got = tokio::time::timeout(T, reader).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "node-1's own entry\n");
}
