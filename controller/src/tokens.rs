//! Bootstrap tokens: creation, listing, revocation, and the check made at join time.

use crate::records::{TokenRecord, now};
use crate::store::{self, Store, StoreError, TOKENS};
use pangaea_core::token::BootstrapToken;
use redb::WriteTransaction;
use std::time::Duration;

pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Why a token did not admit a node. The message names the token (by id) and the reason,
/// so that an operator reading the agent's log knows what to do.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefused {
    #[error("bootstrap token {0} is unknown (create one with `pangaea-ctl token create`)")]
    Unknown(String),
    #[error("bootstrap token {0}: wrong secret")]
    WrongSecret(String),
    #[error(
        "bootstrap token {id} expired at {at} (create a new one with `pangaea-ctl token create`)"
    )]
    Expired { id: String, at: String },
    #[error("bootstrap token {0} has already been used up")]
    UsedUp(String),
    #[error("bootstrap token {0} was revoked")]
    Revoked(String),
    #[error("bootstrap token {id} is bound to node {bound:?}, not {asked:?}")]
    OtherNode {
        id: String,
        bound: String,
        asked: String,
    },
}

#[derive(Debug, Clone)]
pub struct NewToken {
    pub ttl: Duration,
    pub uses: u32,
    pub node: Option<String>,
    pub description: String,
}

impl Default for NewToken {
    fn default() -> Self {
        NewToken {
            ttl: DEFAULT_TTL,
            uses: 1,
            node: None,
            description: String::new(),
        }
    }
}

/// Creates and durably records a token; the returned token is the only copy of its secret.
pub fn create(
    txn: &WriteTransaction,
    spec: &NewToken,
) -> Result<(BootstrapToken, TokenRecord), StoreError> {
    let mut table = txn
        .open_table(TOKENS)
        .map_err(|e| store::db_err("tokens", "*", e))?;
    let token = loop {
        let t = BootstrapToken::generate();
        if store::get::<TokenRecord>(&table, "tokens", t.id())?.is_none() {
            break t;
        }
    };
    let created_at = now();
    let record = TokenRecord {
        id: token.id().to_owned(),
        secret_sha256: hex::encode(token.secret_hash()),
        created_at,
        expires_at: created_at + spec.ttl.as_secs() as i64,
        uses_left: spec.uses.max(1),
        node: spec.node.clone(),
        description: spec.description.clone(),
        revoked: false,
    };
    store::put(&mut table, "tokens", &record.id, &record)?;
    Ok((token, record))
}

/// Checks `token` for a node named `node` without changing anything.
pub fn check(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    token: &BootstrapToken,
    node: &str,
) -> Result<Result<TokenRecord, TokenRefused>, StoreError> {
    let id = token.id().to_owned();
    let Some(rec) = store::get::<TokenRecord>(table, "tokens", &id)? else {
        return Ok(Err(TokenRefused::Unknown(id)));
    };
    let stored = hex::decode(&rec.secret_sha256).unwrap_or_default();
    let refusal = if !token.matches(&stored) {
        TokenRefused::WrongSecret(id)
    } else if rec.revoked {
        TokenRefused::Revoked(id)
    } else if rec.expires_at <= now() {
        TokenRefused::Expired {
            id,
            at: crate::certinfo::rfc3339(rec.expires_at),
        }
    } else if rec.uses_left == 0 {
        TokenRefused::UsedUp(id)
    } else if let Some(bound) = rec.node.as_ref().filter(|b| b.as_str() != node) {
        TokenRefused::OtherNode {
            id,
            bound: bound.clone(),
            asked: node.to_owned(),
        }
    } else {
        return Ok(Ok(rec));
    };
    Ok(Err(refusal))
}

/// Spends one use of a token that [`check`] admitted.
pub fn spend(txn: &WriteTransaction, mut rec: TokenRecord) -> Result<(), StoreError> {
    let mut table = txn
        .open_table(TOKENS)
        .map_err(|e| store::db_err("tokens", "*", e))?;
    rec.uses_left = rec.uses_left.saturating_sub(1);
    store::put(&mut table, "tokens", &rec.id.clone(), &rec)
}

pub fn list(store: &Store) -> Result<Vec<TokenRecord>, StoreError> {
    store.read(|r| {
        store::all(
            &r.open_table(TOKENS)
                .map_err(|e| store::db_err("tokens", "*", e))?,
            "tokens",
        )
    })
}

/// Marks a token revoked. Returns false when no such token exists.
pub fn revoke(txn: &WriteTransaction, id: &str) -> Result<bool, StoreError> {
    let mut table = txn
        .open_table(TOKENS)
        .map_err(|e| store::db_err("tokens", "*", e))?;
    let Some(mut rec) = store::get::<TokenRecord>(&table, "tokens", id)? else {
        return Ok(false);
    };
    rec.revoked = true;
    store::put(&mut table, "tokens", id, &rec)?;
    Ok(true)
}
