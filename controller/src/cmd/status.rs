//! `pangaea-ctl status [-o json]`: every node with its roles, revision, last report, agent,
//! certificate expiry, state, units, etcd membership and boot timeline. Both outputs print
//! the same [`NodeStatus`] rows.

use super::Ctx;
use crate::admin::Backend;
use crate::certinfo::rfc3339;
use crate::cli::Output;
use crate::status::{EtcdStatus, NodeStatus, etcd_addresses, node_status};
use std::collections::BTreeMap;

/// Runs `status`.
pub async fn run(ctx: &Ctx, output: Output) -> anyhow::Result<()> {
    let mut backend = Backend::connect(&ctx.state).await?;
    if matches!(backend, Backend::Local(_)) {
        eprintln!(
            "note: no controller is running for {}; showing the last stored reports",
            ctx.state.path().display()
        );
    }
    let nodes = backend.list_nodes().await?;
    let now = crate::records::now();
    let c = ctx.compilation()?;
    // Creation times from the provider; status works without its privileges, so a provider
    // that cannot be asked only leaves them out.
    let created: BTreeMap<String, i64> =
        match crate::provider::from_config(&c.loaded, &ctx.state, &ctx.image_cache) {
            Ok(p) => p
                .list()
                .await
                .map(|l| {
                    l.into_iter()
                        .map(|n| (n.name.to_string(), n.created_at))
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
    let addresses = etcd_addresses(&nodes, now);
    let etcd = tokio::task::spawn_blocking(move || crate::etcd::members(&c, &addresses)).await?;
    let rows: Vec<NodeStatus> = nodes
        .iter()
        .map(|n| node_status(n, &etcd, created.get(&n.name).copied(), now))
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => print_table(&rows, now),
    }
    Ok(())
}

fn print_table(rows: &[NodeStatus], now: i64) {
    println!(
        "{:<12} {:<14} {:<27} {:<9} {:<10} {:<8} {:<21} STATE",
        "NODE", "ADDRESS", "ROLES", "REVISION", "REPORTED", "AGENT", "CERT EXPIRES"
    );
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    for n in rows {
        let age = if n.last_report_at == 0 {
            "never".to_owned()
        } else {
            format!("{}s ago", now - n.last_report_at)
        };
        println!(
            "{:<12} {:<14} {:<27} {:<9} {:<10} {:<8} {:<21} {}",
            n.name,
            n.addresses.first().map_or("-", String::as_str),
            dash(&n.roles.join(",")),
            format!("{}/{}", n.applied_revision, n.assigned_revision),
            age,
            dash(&n.agent_version),
            rfc3339(n.certificate_not_after),
            n.state,
        );
        let short = |name: &str| name.trim_end_matches(".service").to_owned();
        let running: Vec<String> = n
            .units
            .iter()
            .filter(|u| u.not_started.is_none())
            .map(|u| format!("{}={}", short(&u.name), u.active))
            .collect();
        if !running.is_empty() {
            println!("{:<12} units: {}", "", running.join(" "));
        }
        let mut held: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for u in &n.units {
            if let Some(ns) = &u.not_started {
                held.entry(ns.reason.as_str())
                    .or_default()
                    .push(short(&u.name));
            }
        }
        for (reason, units) in held {
            println!("{:<12} not started ({reason}): {}", "", units.join(" "));
        }
        let is_etcd = n.roles.iter().any(|r| r == "etcd");
        let line = match (&n.etcd, n.etcd.member()) {
            (_, Some(id)) => Some(format!(
                "member {id}{}",
                if n.etcd.is_leader() { " (leader)" } else { "" }
            )),
            (EtcdStatus::Unknown { error }, None) => is_etcd.then(|| format!("unknown: {error}")),
            (EtcdStatus::Asked { .. }, None) => is_etcd.then(|| "not answering".into()),
        };
        if let Some(line) = line {
            println!("{:<12} etcd: {line}", "");
        }
        if let Some(t) = n.timeline.describe() {
            println!("{:<12} timeline: {t}", "");
        }
        for e in &n.errors {
            println!("{:<12} error: {e}", "");
        }
    }
}
