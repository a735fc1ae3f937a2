//! `pangaea-ctl status [-o json]`: every node with its roles, revision, last report, agent,
//! certificate expiry, state, units, etcd membership and boot timeline. Both outputs print
//! the same [`NodeStatus`] rows.

use super::Ctx;
use crate::admin::Backend;
use crate::certinfo::rfc3339;
use crate::cli::Output;
use crate::status::{EtcdStatus, NodeStatus, etcd_addresses, node_status};
use std::collections::BTreeMap;
use std::io::Write;

/// Runs `status`.
pub async fn run(ctx: &Ctx, output: Output) -> anyhow::Result<()> {
    let (rows, now) = rows(ctx).await?;
    super::print_data(output, &rows, || {
        let mut table = Vec::new();
        print_table(&rows, now, &mut table)?;
        super::print_out(&String::from_utf8_lossy(&table))
    })
}

/// Every node's [`NodeStatus`], and the time they were taken at.
pub async fn rows(ctx: &Ctx) -> anyhow::Result<(Vec<NodeStatus>, i64)> {
    let mut backend = Backend::connect(&ctx.state).await?;
    if matches!(backend, Backend::Local(_)) {
        crate::errln!(
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
            Ok(p) => {
                super::print_runtime_findings(p.as_ref(), &c);
                p.list()
                    .await
                    .map(|l| {
                        l.into_iter()
                            .map(|n| (n.name.to_string(), n.created_at))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Err(_) => BTreeMap::new(),
        };
    let addresses = etcd_addresses(&nodes, now);
    let etcd = tokio::task::spawn_blocking(move || crate::etcd::members(&c, &addresses)).await?;
    let rows: Vec<NodeStatus> = nodes
        .iter()
        .map(|n| {
            let issued = crate::issued::nearest_expiry(&ctx.state, &n.name);
            node_status(n, &etcd, created.get(&n.name).copied(), issued, now)
        })
        .collect();
    Ok((rows, now))
}

/// Prints the table through [`terminal_safe`]: nodes report most of the strings in it.
pub fn print_table(rows: &[NodeStatus], now: i64, out: &mut dyn Write) -> std::io::Result<()> {
    let mut raw = Vec::new();
    render_table(rows, now, &mut raw)?;
    out.write_all(terminal_safe(&String::from_utf8_lossy(&raw)).as_bytes())
}

fn render_table(rows: &[NodeStatus], now: i64, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12} {:<14} {:<27} {:<9} {:<10} {:<8} {:<21} STATE",
        "NODE", "ADDRESS", "ROLES", "REVISION", "REPORTED", "AGENT", "CERT EXPIRES"
    )?;
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
        writeln!(
            out,
            "{:<12} {:<14} {:<27} {:<9} {:<10} {:<8} {:<21} {}",
            n.name,
            n.addresses.first().map_or("-", String::as_str),
            dash(&n.roles.join(",")),
            format!("{}/{}", n.applied_revision, n.assigned_revision),
            age,
            dash(&n.agent_version),
            rfc3339(n.nearest_certificate_expiry),
            if n.drained {
                format!("{} (drained)", n.state)
            } else {
                n.state.clone()
            },
        )?;
        let short = |name: &str| name.trim_end_matches(".service").to_owned();
        let running: Vec<String> = n
            .units
            .iter()
            .filter(|u| u.not_started.is_none())
            .map(|u| format!("{}={}", short(&u.name), u.active))
            .collect();
        if !running.is_empty() {
            writeln!(out, "{:<12} units: {}", "", running.join(" "))?;
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
            writeln!(
                out,
                "{:<12} not started ({reason}): {}",
                "",
                units.join(" ")
            )?;
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
            writeln!(out, "{:<12} etcd: {line}", "")?;
        }
        if let Some(t) = n.timeline.describe() {
            writeln!(out, "{:<12} timeline: {t}", "")?;
        }
        for e in &n.errors {
            writeln!(out, "{:<12} error: {e}", "")?;
        }
    }
    Ok(())
}

/// `text` with every control character but the newline escaped (`\u{1b}`), so that what a
/// node reports (unit names, errors, versions) cannot move the cursor, retitle or clear the
/// operator's terminal.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangaea_proto as pb;

    /// Hardening #12: strings a node reports are printed with control characters escaped.
    #[test]
    fn reported_strings_cannot_inject_terminal_escapes() {
        let node = pb::NodeInfo {
            name: "node-1".into(),
            last_report_at: 100,
            assigned_revision: 1,
            last_report: Some(pb::HealthReport {
                applied_revision: 1,
                agent_version: "1.0\x1b]0;pwned\x07".into(),
                errors: vec!["disk \x1b[31mfull\x1b[0m\r".into()],
                units: vec![pb::UnitState {
                    name: "evil\x1b[2J.service".into(),
                    active_state: "failed\x08".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let row = crate::status::node_status(&node, &Ok(Default::default()), None, None, 100);
        let mut table = Vec::new();
        print_table(&[row], 100, &mut table).unwrap();
        let shown = String::from_utf8(table).unwrap();
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown:?}"
        );
        assert!(shown.contains("disk \\u{1b}[31mfull"), "{shown}");
        assert!(shown.contains("evil\\u{1b}[2J"), "{shown}");
    }
}
