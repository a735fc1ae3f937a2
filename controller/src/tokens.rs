//! Bootstrap tokens: creation, listing, revocation, and the check made at join time.

use crate::records::{JoinAttempt, TokenRecord, now};
use crate::store::{self, Store, StoreError, TOKENS};
use pangaea_core::token::BootstrapToken;
use redb::WriteTransaction;
use std::time::Duration;

/// Lifetime of a token created without one: an hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The longest a bootstrap token may live: a join secret valid for longer is a standing
/// credential, and expiry arithmetic stays far from overflow.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a token did not admit a node. The message names the token (by id) and the reason,
/// so that an operator reading the agent's log knows what to do.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefused {
    /// No token has this id (never created, or the id was mistyped).
    #[error("bootstrap token {0} is unknown (create one with `pangaea-ctl token create`)")]
    Unknown(String),
    /// The id exists but the secret does not hash to the stored SHA-256.
    #[error("bootstrap token {0}: wrong secret")]
    WrongSecret(String),
    /// The token's lifetime is over.
    #[error(
        "bootstrap token {id} expired at {at} (create a new one with `pangaea-ctl token create`)"
    )]
    Expired {
        /// The token's id.
        id: String,
        /// When it expired, RFC 3339 UTC.
        at: String,
    },
    /// Every use the token was created with has been spent on a join.
    #[error("bootstrap token {0} has already been used up")]
    UsedUp(String),
    /// The operator revoked the token.
    #[error("bootstrap token {0} was revoked")]
    Revoked(String),
    /// The token is bound to a node name and the joining node asked for another.
    #[error("bootstrap token {id} is bound to node {bound:?}, not {asked:?}")]
    OtherNode {
        /// The token's id.
        id: String,
        /// The node name the token admits.
        bound: String,
        /// The name the joining node asked for.
        asked: String,
    },
}

/// What to create a token with (`token create`'s options).
#[derive(Debug, Clone)]
pub struct NewToken {
    /// How long the token admits joins, from its creation.
    pub ttl: Duration,
    /// How many joins it admits; 0 is taken as 1.
    pub uses: u32,
    /// When set, only a node of this name may join with it (and may replace an existing
    /// node of that name).
    pub node: Option<String>,
    /// Free text for the operator, shown by `token list`.
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
        expires_at: created_at.saturating_add(spec.ttl.min(MAX_TTL).as_secs() as i64),
        uses_left: spec.uses.max(1),
        node: spec.node.clone(),
        description: spec.description.clone(),
        revoked: false,
        spent_by: None,
    };
    store::put(&mut table, "tokens", &record.id, &record)?;
    Ok((token, record))
}

/// Checks `token` for a node named `node` without changing anything.
pub fn check(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    token: &BootstrapToken,
    node: &str,
    attempt: &JoinAttempt,
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
    } else if rec.uses_left == 0 && rec.spent_by.as_ref() != Some(attempt) {
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
pub fn spend(
    txn: &WriteTransaction,
    mut rec: TokenRecord,
    attempt: JoinAttempt,
) -> Result<(), StoreError> {
    let mut table = txn
        .open_table(TOKENS)
        .map_err(|e| store::db_err("tokens", "*", e))?;
    if rec.spent_by.as_ref() == Some(&attempt) && rec.uses_left == 0 {
        return Ok(()); // the same join again: nothing more to spend
    }
    rec.uses_left = rec.uses_left.saturating_sub(1);
    rec.spent_by = Some(attempt);
    store::put(&mut table, "tokens", &rec.id.clone(), &rec)
}

/// Every token record (ids and metadata; secrets exist only as their SHA-256).
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
