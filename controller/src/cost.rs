//! `pangaea-ctl cost`: what the configured cluster costs a month on Google Compute Engine,
//! beside a managed single-node cluster, from a dated price table (`prices/gce.yaml`,
//! built in; `--prices FILE` replaces it).
//!
//! What a GCE node is made of for the estimate is [`pangaea_compiler::provider::gce`]'s, the
//! same constants the provider creates nodes with: its machine type (the pool's, else
//! [`gce::DEFAULT_MACHINE_TYPE`]), a boot disk of [`gce::BOOT_DISK_GIB`] and the pool's data
//! disks (all [`gce::DISK_TYPE`]), and one external IPv4 address in use.

use pangaea_compiler::config::Loaded;
use pangaea_compiler::model::ClusterModel;
use pangaea_compiler::provider::{Provider, gce};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The built-in price table.
pub const BUILT_IN: &str = include_str!("../prices/gce.yaml");

/// A price table (the format of `prices/gce.yaml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PriceTable {
    /// When the prices were recorded.
    pub date: String,
    /// Where from.
    pub source: String,
    /// Their currency.
    pub currency: String,
    /// Hours billed in a month.
    pub hours_per_month: f64,
    /// Prices by region.
    pub regions: BTreeMap<String, RegionPrices>,
    /// The free tier.
    pub free_tier: FreeTier,
    /// The managed cluster to compare with.
    pub managed: Managed,
}

/// One region's prices.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegionPrices {
    /// Per machine type, per hour.
    pub machines: BTreeMap<String, Rate>,
    /// Per disk type, per GiB and month.
    pub disks: BTreeMap<String, f64>,
    /// An external IPv4 address in use, per hour.
    pub ipv4_in_use: Rate,
}

/// An hourly price on demand and as Spot.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rate {
    /// On demand.
    pub on_demand: f64,
    /// Spot.
    pub spot: f64,
}

impl Rate {
    fn hourly(self, spot: bool) -> f64 {
        if spot { self.spot } else { self.on_demand }
    }
}

/// The free tier that applies to a cluster's nodes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FreeTier {
    /// Regions where one non-Spot e2-micro a month is free.
    pub e2_micro_regions: Vec<String>,
    /// Free pd-standard, GiB-months.
    pub pd_standard_gib: u32,
}

/// A managed single-node cluster, for comparison.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Managed {
    /// What it is.
    pub name: String,
    /// The cluster fee, per hour.
    pub cluster_fee_per_hour: f64,
    /// The monthly credit of the free tier against the fee.
    pub free_tier_credit_per_month: f64,
    /// Its node's machine type.
    pub machine_type: String,
    /// Its node's boot disk, GiB.
    pub boot_disk_gib: u32,
    /// Its node's boot disk type.
    pub boot_disk_type: String,
}

impl PriceTable {
    /// Reads a table; `name` names it in errors, which carry the line and column.
    pub fn parse(name: &str, text: &str) -> anyhow::Result<PriceTable> {
        serde_norway::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            anyhow::anyhow!("price table {name}{at}: {e}")
        })
    }

    /// The built-in table.
    pub fn built_in() -> PriceTable {
        PriceTable::parse("(built in)", BUILT_IN).expect("the built-in price table parses")
    }

    fn region(&self, region: &str) -> anyhow::Result<&RegionPrices> {
        self.regions.get(region).ok_or_else(|| {
            let known: Vec<&str> = self.regions.keys().map(String::as_str).collect();
            anyhow::anyhow!(
                "the price table ({}) has no prices for region {region} (it has: {}); pass --prices FILE with them",
                self.date,
                known.join(", ")
            )
        })
    }
}

/// One line of an estimate.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// What is paid for.
    pub item: String,
    /// How many (nodes, GiB, addresses).
    pub quantity: f64,
    /// The price of one a month.
    pub unit_monthly: f64,
    /// quantity × unit_monthly (negative for a credit).
    pub monthly: f64,
}

impl Line {
    fn new(item: String, quantity: f64, unit_monthly: f64) -> Line {
        Line {
            item,
            quantity,
            unit_monthly,
            monthly: quantity * unit_monthly,
        }
    }
}

/// A monthly estimate.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    /// The cluster.
    pub cluster: String,
    /// The configured provider (`local` and `vagrant` cost nothing: the estimate is then what
    /// the cluster would cost on GCE).
    pub provider: String,
    /// The region priced.
    pub region: String,
    /// Whether the region was assumed (no `provider.zones`).
    pub region_assumed: bool,
    /// Spot VMs.
    pub spot: bool,
    /// What the cluster pays for, credits last.
    pub lines: Vec<Line>,
    /// The sum, a month.
    pub total: f64,
    /// The managed cluster compared with.
    pub managed_name: String,
    /// Its lines, credits last.
    pub managed: Vec<Line>,
    /// Its sum, a month, with its free-tier credit.
    pub managed_total: f64,
    /// The currency.
    pub currency: String,
    /// The price table's date and source.
    pub prices: String,
    /// What the figures leave out.
    pub notes: Vec<String>,
}

/// Estimates `loaded`'s cluster on GCE with `prices`.
pub fn estimate(loaded: &Loaded, prices: &PriceTable) -> anyhow::Result<Estimate> {
    let config = &loaded.config;
    let model = ClusterModel::build(loaded);
    let spot = matches!(&config.provider, Provider::Gce(g) if g.spot);
    let zones = config.provider.zones();
    // A GCE cluster's region as its provider resolves it (gcloud's settings when no zone
    // is configured); otherwise, or when nothing says, the default region, said so.
    let resolved = match &config.provider {
        Provider::Gce(g) => {
            crate::provider::gce::region(g, &crate::provider::gce::GcloudEnv::from_env())
        }
        Provider::Local | Provider::Vagrant(_) => None,
    };
    let region_assumed = resolved.is_none();
    let region = resolved.unwrap_or_else(|| gce::DEFAULT_REGION.to_owned());
    let mut notes = Vec::new();
    if let Some(other) = zones.iter().find(|z| gce::region_of(z) != region) {
        notes.push(format!(
            "zone {other} is outside {region}: priced as {region}"
        ));
    }
    let r = prices.region(&region)?;
    let month = prices.hours_per_month;
    let kind = if spot { "Spot" } else { "on demand" };

    let mut machines: BTreeMap<String, u32> = BTreeMap::new();
    let mut data_gib = 0u64;
    for n in &model.nodes {
        let pool = config.pools.iter().find(|p| p.name == n.pool);
        let machine = gce::machine_type(pool.and_then(|p| p.machine_type.as_deref())).to_owned();
        *machines.entry(machine).or_default() += 1;
        data_gib += n
            .disks
            .iter()
            .map(|d| u64::from(d.config.size_gib))
            .sum::<u64>();
    }
    let nodes = model.nodes.len() as f64;
    let disk_price = |t: &str| {
        r.disks.get(t).copied().ok_or_else(|| {
            anyhow::anyhow!(
                "the price table ({}) has no price for disk type {t} in {region}",
                prices.date
            )
        })
    };
    let machine_rate = |m: &str| {
        r.machines.get(m).copied().ok_or_else(|| {
            anyhow::anyhow!(
                "the price table ({}) has no price for machine type {m} in {region}; pass --prices FILE with it",
                prices.date
            )
        })
    };
    let mut lines = Vec::new();
    for (m, count) in &machines {
        lines.push(Line::new(
            format!("{m} ({kind})"),
            f64::from(*count),
            machine_rate(m)?.hourly(spot) * month,
        ));
    }
    lines.push(Line::new(
        format!("{} boot disks, GiB", gce::DISK_TYPE),
        nodes * f64::from(gce::BOOT_DISK_GIB),
        disk_price(gce::DISK_TYPE)?,
    ));
    if data_gib > 0 {
        lines.push(Line::new(
            format!("{} data disks, GiB", gce::DISK_TYPE),
            data_gib as f64,
            disk_price(gce::DISK_TYPE)?,
        ));
    }
    lines.push(Line::new(
        "external IPv4 addresses in use".into(),
        nodes,
        r.ipv4_in_use.hourly(spot) * month,
    ));
    let free_micro = !spot
        && machines.contains_key("e2-micro")
        && prices.free_tier.e2_micro_regions.contains(&region);
    if free_micro {
        lines.push(Line::new(
            "free tier: one e2-micro".into(),
            1.0,
            -machine_rate("e2-micro")?.on_demand * month,
        ));
    }
    notes.push(format!(
        "the free tier's {} GiB of pd-standard do not apply: Pangaea's disks are {}",
        prices.free_tier.pd_standard_gib,
        gce::DISK_TYPE
    ));
    notes.push("network egress and snapshots are not included".into());
    let total = lines.iter().map(|l| l.monthly).sum();

    let m = &prices.managed;
    let fee = m.cluster_fee_per_hour * month;
    let mut managed = vec![
        Line::new("cluster fee".into(), 1.0, fee),
        Line::new(
            format!("{} node (on demand)", m.machine_type),
            1.0,
            machine_rate(&m.machine_type)?.on_demand * month,
        ),
        Line::new(
            format!("{} boot disk, GiB", m.boot_disk_type),
            f64::from(m.boot_disk_gib),
            disk_price(&m.boot_disk_type)?,
        ),
        Line::new(
            "external IPv4 address in use".into(),
            1.0,
            r.ipv4_in_use.on_demand * month,
        ),
    ];
    managed.push(Line::new(
        "free tier credit (one zonal cluster per billing account)".into(),
        1.0,
        -m.free_tier_credit_per_month.min(fee),
    ));
    let managed_total = managed.iter().map(|l| l.monthly).sum();
    Ok(Estimate {
        cluster: config.name.clone(),
        provider: config.provider.kind().to_string(),
        region,
        region_assumed,
        spot,
        lines,
        total,
        managed_name: m.name.clone(),
        managed,
        managed_total,
        currency: prices.currency.clone(),
        prices: format!("{} ({})", prices.date, prices.source),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(yaml: &str) -> Loaded {
        Loaded::parse("p.yaml", yaml, std::path::Path::new(".")).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.005
    }

    #[test]
    fn the_default_cluster_on_gce() {
        let e = estimate(&loaded("provider: {type: gce}\n"), &PriceTable::built_in()).unwrap();
        assert!(e.region_assumed && e.region == "us-central1");
        // 3 × e2-small on demand, 3 × 20 GiB pd-balanced, 3 addresses.
        let small = 0.016751 * 730.0;
        assert_eq!(e.lines[0].item, "e2-small (on demand)");
        assert!(close(e.lines[0].monthly, 3.0 * small), "{:?}", e.lines);
        assert!(close(e.lines[1].monthly, 60.0 * 0.10));
        assert!(close(e.lines[2].monthly, 3.0 * 0.005 * 730.0));
        assert!(close(e.total, 3.0 * small + 6.0 + 10.95), "{}", e.total);
        // GKE: $73 fee credited in full, e2-medium, 100 GiB, one address.
        assert!(close(e.managed_total, 0.033503 * 730.0 + 10.0 + 3.65));
    }

    #[test]
    fn spot_zones_disks_and_the_free_tier() {
        let e = estimate(
            &loaded(
                "provider: {type: gce, zones: [europe-west1-b, europe-west1-c], spot: true}\npools:\n  - name: n\n    count: 3\n    machineType: e2-medium\n    disks: [{name: data, sizeGiB: 50, mount: /data}]\n",
            ),
            &PriceTable::built_in(),
        )
        .unwrap();
        assert_eq!(e.region, "europe-west1");
        assert!(!e.region_assumed && e.spot);
        assert!(
            close(e.lines[0].monthly, 3.0 * 0.011058 * 730.0),
            "{:?}",
            e.lines
        );
        assert!(
            e.lines
                .iter()
                .any(|l| l.item.contains("data disks") && l.quantity == 150.0)
        );
        // One e2-micro is free, on demand only, in the free tier's regions.
        let micro = "provider: {type: gce, zones: [us-east1-b]}\npools:\n  - name: n\n    count: 1\n    machineType: e2-micro\n    roles: [worker]\n  - name: cp\n    count: 1\n";
        let e = estimate(&loaded(micro), &PriceTable::built_in()).unwrap();
        let credit = e.lines.last().unwrap();
        assert!(credit.item.contains("free tier") && credit.monthly < 0.0);
        let spot = micro.replace("us-east1-b]", "us-east1-b], spot: true");
        let e = estimate(&loaded(&spot), &PriceTable::built_in()).unwrap();
        assert!(!e.lines.iter().any(|l| l.item.contains("free tier")));
    }

    #[test]
    fn unknown_prices_and_bad_tables_are_named() {
        let e = estimate(
            &loaded("provider: {type: gce, zones: [asia-east1-a]}\n"),
            &PriceTable::built_in(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("asia-east1") && e.contains("--prices"), "{e}");
        let e = estimate(
            &loaded("provider: {type: gce}\npools:\n  - name: n\n    machineType: c3-standard-4\n    memoryMiB: 16384\n"),
            &PriceTable::built_in(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("c3-standard-4"), "{e}");
        let bad = BUILT_IN.replace("hoursPerMonth: 730", "hoursPerMonth: many");
        let e = PriceTable::parse("mine.yaml", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("price table mine.yaml:"), "{e}");
    }
}
