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
        TokenCommand::List => {
            crate::outln!(
                "{:<8} {:<22} {:<5} {:<16} {:<8} DESCRIPTION",
                "ID",
                "EXPIRES",
                "USES",
                "NODE",
                "STATE"
            );
            let now = crate::records::now();
            for t in backend.list_tokens().await? {
                let state = if t.revoked {
                    "revoked"
                } else if t.expires_at <= now {
                    "expired"
                } else if t.uses_left == 0 {
                    "used"
                } else {
                    "valid"
                };
                crate::outln!(
                    "{:<8} {:<22} {:<5} {:<16} {:<8} {}",
                    t.id,
                    rfc3339(t.expires_at),
                    t.uses_left,
                    if t.node_name.is_empty() {
                        "*"
                    } else {
                        &t.node_name
                    },
                    state,
                    t.description
                );
            }
        }
        TokenCommand::Revoke { id } => {
            backend.revoke_token(id.clone()).await?;
            crate::outln!("token {id} revoked");
        }
    }
    Ok(())
}
