//! `pangaea-ctl token create|list|revoke`: bootstrap tokens.

use super::Ctx;
use crate::admin::Backend;
use crate::certinfo::rfc3339;
use crate::cli::TokenCommand;
use pangaea_proto as pb;

/// Runs a `token` subcommand.
pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> anyhow::Result<()> {
    let mut backend = Backend::connect(&ctx.state).await?;
    match cmd {
        TokenCommand::Create {
            ttl,
            uses,
            node,
            description,
        } => {
            let resp = backend
                .create_token(pb::CreateTokenRequest {
                    ttl_seconds: ttl.as_secs(),
                    uses,
                    node_name: node.map(String::from).unwrap_or_default(),
                    description,
                })
                .await?;
            crate::outln!("{}", resp.token);
            crate::errln!("expires {}", rfc3339(resp.expires_at));
        }
        TokenCommand::List { output } => {
            let now = crate::records::now();
            let rows: Vec<TokenRow> = backend
                .list_tokens()
                .await?
                .into_iter()
                .map(|t| TokenRow {
                    state: if t.revoked {
                        "revoked"
                    } else if t.expires_at <= now {
                        "expired"
                    } else if t.uses_left == 0 {
                        "used"
                    } else {
                        "valid"
                    },
                    id: t.id,
                    expires: rfc3339(t.expires_at),
                    uses_left: t.uses_left,
                    node: t.node_name,
                    description: t.description,
                })
                .collect();
            super::print_data(output, &rows, || {
                crate::outln!(
                    "{:<8} {:<22} {:<5} {:<16} {:<8} DESCRIPTION",
                    "ID",
                    "EXPIRES",
                    "USES",
                    "NODE",
                    "STATE"
                );
                for t in &rows {
                    let node = if t.node.is_empty() { "*" } else { &t.node };
                    crate::outln!(
                        "{:<8} {:<22} {:<5} {:<16} {:<8} {}",
                        t.id,
                        t.expires,
                        t.uses_left,
                        node,
                        t.state,
                        t.description
                    );
                }
                Ok(())
            })?;
        }
        TokenCommand::Revoke { id } => {
            backend.revoke_token(id.clone()).await?;
            crate::outln!("token {id} revoked");
        }
    }
    Ok(())
}

/// One row of `token list` (never the secret).
#[derive(serde::Serialize)]
struct TokenRow {
    id: String,
    /// RFC 3339.
    expires: String,
    uses_left: u32,
    /// The node it is bound to; empty: any.
    node: String,
    /// `valid`, `used`, `expired` or `revoked`.
    state: &'static str,
    description: String,
}
