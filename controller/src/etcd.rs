//! The operator's view of the cluster's etcd: `ETCDCTL_*` settings with an operator client
//! certificate from the etcd CA (issued once, kept in `.pangaea/pki/issued/`), and
//! membership as etcd itself reports it (asked with `etcdctl`, with short timeouts, so
//! `status` stays quick when members are down).

use crate::compile::Compilation;
use crate::issued::PkiInputs;
use crate::pki::CaKind;
use pangaea_compiler::inputs::{CertRequest, Inputs};
use pangaea_core::NodeName;
use std::collections::BTreeMap;
use std::process::Command;

/// The issued-certificate id of the operator's etcd client certificate.
const OPERATOR_CERT_ID: &str = "cluster/etcd-operator";

/// `https://ADDRESS:2379` (the compiler's rule, [`pangaea_compiler::helpers::etcd_client_url`]).
pub fn client_url(address: &str) -> String {
    pangaea_compiler::helpers::etcd_client_url(address)
}

/// The operator's etcd client certificate (issued on first use) and key.
fn operator_cert(c: &Compilation) -> anyhow::Result<crate::state_dir::IssuedPaths> {
    let inputs = PkiInputs::new(&c.pki, &c.state_dir)?;
    let req = CertRequest {
        ca: CaKind::Etcd,
        id: OPERATOR_CERT_ID.into(),
        common_name: "pangaea-operator".into(),
        organizations: vec![],
        dns_names: vec![],
        ips: vec![],
        server: false,
        client: true,
    };
    inputs.cert(&req).map_err(anyhow::Error::msg)?;
    Ok(c.state_dir.issued(OPERATOR_CERT_ID))
}

/// The etcd members the configuration has whose machines run, as (node, client URL): the
/// only ones worth asking — the address of a machine that does not run may route anywhere.
/// And whether any etcd member's machine exists at all (running or not).
pub async fn running_members(
    c: &Compilation,
    provider: &dyn crate::provider::Provider,
) -> Result<(Vec<(NodeName, String)>, bool), crate::provider::ProviderError> {
    let machines = provider.list().await?;
    let etcd_nodes: Vec<_> = c.model.nodes.iter().filter(|n| n.is_etcd).collect();
    let exists = machines
        .iter()
        .any(|m| etcd_nodes.iter().any(|n| n.name == m.name));
    let running = etcd_nodes
        .iter()
        .filter(|n| {
            machines
                .iter()
                .any(|m| m.name == n.name && m.state == crate::provider::NodeState::Running)
        })
        .map(|n| (n.name.clone(), client_url(&n.address.to_string())))
        .collect();
    Ok((running, exists))
}

/// The client URL of every etcd member the configuration has.
pub fn endpoints(c: &Compilation) -> Vec<String> {
    c.model
        .nodes
        .iter()
        .filter(|n| n.is_etcd)
        .map(|n| client_url(&n.address.to_string()))
        .collect()
}

/// The controller's etcd client ([`crate::membership::Etcd`]) with the operator's
/// certificate.
pub fn operator_client(c: &Compilation) -> anyhow::Result<crate::membership::Etcd> {
    let issued = operator_cert(c)?;
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))
    };
    Ok(crate::membership::Etcd::new(
        &read(&c.pki.ca_cert_path(CaKind::Etcd))?,
        &read(&issued.cert)?,
        &read(&issued.key)?,
    )?)
}

/// The name of the etcd leader, as the members that answer say (`None` when none does or
/// they have no leader).
pub async fn leader(c: &Compilation, provider: &dyn crate::provider::Provider) -> Option<String> {
    let (running, _) = running_members(c, provider).await.ok()?;
    if running.is_empty() {
        return None;
    }
    let etcd = operator_client(c).ok()?;
    let endpoints: Vec<String> = running.into_iter().map(|(_, e)| e).collect();
    let survey = crate::membership::survey(&etcd, &endpoints).await;
    survey.answers.iter().find_map(|(_, r)| {
        let v = r.as_ref().ok()?;
        v.members
            .iter()
            .find(|m| m.id == v.leader && v.leader != 0)
            .map(|m| m.name.clone())
    })
}

/// `ETCDCTL_*` settings for every etcd member of the cluster.
pub fn operator_env(c: &Compilation) -> anyhow::Result<Vec<(&'static str, String)>> {
    let issued = operator_cert(c)?;
    let abs = |p: std::path::PathBuf| std::fs::canonicalize(&p).unwrap_or(p).display().to_string();
    let endpoints = endpoints(c);
    Ok(vec![
        ("ETCDCTL_API", "3".to_owned()),
        ("ETCDCTL_ENDPOINTS", endpoints.join(",")),
        ("ETCDCTL_CACERT", abs(c.pki.ca_cert_path(CaKind::Etcd))),
        ("ETCDCTL_CERT", abs(issued.cert)),
        ("ETCDCTL_KEY", abs(issued.key)),
    ])
}

/// An etcd member as etcd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member ID (hex).
    pub id: String,
    /// Whether it is the leader.
    pub leader: bool,
}

/// etcd membership as etcd itself reports it, asked of the members at `addresses` (the
/// nodes whose etcd unit is running): address → member. An error says why it could not
/// be asked (no etcdctl, no quorum, …). Blocking: it runs `etcdctl`.
pub fn members(c: &Compilation, addresses: &[String]) -> Result<BTreeMap<String, Member>, String> {
    if addresses.is_empty() {
        return Ok(BTreeMap::new());
    }
    let env = operator_env(c).map_err(|e| e.to_string())?;
    let endpoints: Vec<String> = addresses.iter().map(|a| client_url(a)).collect();
    let out = Command::new("etcdctl")
        .envs(env)
        .env("ETCDCTL_ENDPOINTS", endpoints.join(","))
        .args([
            "--dial-timeout=500ms",
            "--command-timeout=1s",
            "endpoint",
            "status",
            "-w",
            "json",
        ])
        .output()
        .map_err(|_| "etcdctl not found (apt-get install etcd-client)".to_owned())?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "etcdctl: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )
    })?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let ep = r["Endpoint"]
                .as_str()?
                .trim_start_matches("https://")
                .split(':')
                .next()?
                .to_owned();
            let id = r["Status"]["header"]["member_id"].as_u64()?;
            let leader = r["Status"]["leader"].as_u64()? == id;
            Some((
                ep,
                Member {
                    id: format!("{id:x}"),
                    leader,
                },
            ))
        })
        .collect())
}
