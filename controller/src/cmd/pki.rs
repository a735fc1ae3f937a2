//! `pangaea-ctl pki show|pin`: the cluster's certificate authorities.

use super::Ctx;
use crate::certinfo::{CertInfo, rfc3339};
use crate::cli::PkiCommand;
use crate::pki::{CaKind, Pki};

/// Runs a `pki` subcommand.
pub fn run(ctx: &Ctx, cmd: PkiCommand) -> anyhow::Result<()> {
    // The PKI files are only created, never rewritten, so reading them does not need the
    // store's lock; a first `pki show` creates them like any other first use.
    let pki = Pki::load_or_create(&ctx.state.pki())?;
    match cmd {
        PkiCommand::Pin => crate::outln!("{}", pki.controller_pin()),
        PkiCommand::Show { output } => {
            let mut rows: Vec<(String, CertInfo)> = CaKind::ALL
                .iter()
                .filter_map(|k| {
                    CertInfo::from_der(&pki.ca(*k).cert_der).map(|i| (k.file_stem().to_owned(), i))
                })
                .collect();
            if let Some(info) = std::fs::read_to_string(pki.controller_cert_path())
                .ok()
                .and_then(|p| CertInfo::from_pem(&p))
            {
                rows.push(("controller".into(), info));
            }
            let data: Vec<serde_json::Value> = rows
                .iter()
                .map(|(n, i)| serde_json::json!({"name": n, "cert": i}))
                .collect();
            super::print_data(output, &data, || {
                crate::outln!("{:<16} {:<40} {:<22} SANS", "NAME", "SUBJECT", "EXPIRES");
                for (name, i) in rows {
                    crate::outln!(
                        "{:<16} {:<40} {:<22} {}",
                        name,
                        i.subject,
                        rfc3339(i.not_after),
                        if i.sans.is_empty() {
                            "-".into()
                        } else {
                            i.sans.join(",")
                        }
                    );
                }
                crate::outln!("\nagent pin: {}", pki.controller_pin());
                Ok(())
            })?;
        }
    }
    Ok(())
}
