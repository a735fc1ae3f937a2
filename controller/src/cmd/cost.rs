//! `pangaea-ctl cost [-o json] [--prices FILE]` ([`crate::cost`]).

use super::Ctx;
use crate::cli::Output;
use crate::cost::{Estimate, Line, PriceTable};
use std::path::Path;

/// Runs `cost`.
pub fn run(ctx: &Ctx, output: Output, prices: Option<&Path>) -> anyhow::Result<()> {
    let loaded = pangaea_compiler::config::Loaded::load(&ctx.config)?;
    let table = match prices {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("price table {}: {e}", p.display()))?;
            PriceTable::parse(&p.display().to_string(), &text)?
        }
        None => PriceTable::built_in(),
    };
    let e = crate::cost::estimate(&loaded, &table)?;
    super::print_data(output, &e, || super::print_out(&table_text(&e)))
}

fn money(e: &Estimate, v: f64) -> String {
    let sign = if v < 0.0 { "-" } else { "" };
    let symbol = if e.currency == "USD" { "$" } else { "" };
    let unit = if symbol.is_empty() {
        format!(" {}", e.currency)
    } else {
        String::new()
    };
    format!("{sign}{symbol}{:.2}{unit}", v.abs())
}

fn lines(e: &Estimate, lines: &[Line], out: &mut String) {
    for l in lines {
        let qty = if l.quantity.fract() == 0.0 {
            format!("{}", l.quantity as u64)
        } else {
            format!("{:.1}", l.quantity)
        };
        out.push_str(&format!(
            "  {:>5} × {:<52} {:>10} each {:>11}\n",
            qty,
            l.item,
            money(e, l.unit_monthly),
            money(e, l.monthly)
        ));
    }
}

/// The estimate as a table for people.
pub fn table_text(e: &Estimate) -> String {
    let mut out = String::new();
    if e.provider != "gce" {
        out.push_str(&format!(
            "Provider {}: nothing is billed. On GCE (provider: {{type: gce}}) this cluster would cost:\n",
            e.provider
        ));
    }
    out.push_str(&format!(
        "Cluster {} on GCE, {}{}{}, a month:\n",
        e.cluster,
        e.region,
        if e.region_assumed {
            " (assumed: set provider.zones or CLOUDSDK_COMPUTE_REGION)"
        } else {
            ""
        },
        if e.spot { ", Spot VMs" } else { "" }
    ));
    lines(e, &e.lines, &mut out);
    out.push_str(&format!("  {:<72} {:>11}\n", "total", money(e, e.total)));
    out.push_str(&format!("For comparison, {}:\n", e.managed_name));
    lines(e, &e.managed, &mut out);
    out.push_str(&format!(
        "  {:<72} {:>11}\n",
        "total (control plane in one zone)",
        money(e, e.managed_total)
    ));
    for n in &e.notes {
        out.push_str(&format!("Note: {n}.\n"));
    }
    out.push_str(&format!(
        "Prices of {}; --prices FILE uses others.\n",
        e.prices
    ));
    out
}
