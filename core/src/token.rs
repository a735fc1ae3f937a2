//! Bootstrap tokens: `<id>.<secret>` with a 6-character id and a 16-character secret from
//! `[a-z0-9]` (about 82 bits), the format of kubeadm's tokens, so operators recognise them.
//!
//! Only the SHA-256 of the secret is stored. The secret is high-entropy and random, so a
//! fast hash is sufficient (no password stretching is needed), and comparison is constant-time.

/// Where every provider makes a recovery token appear on a node (read-only to the node):
/// `up` puts a fresh single-use token bound to the node's name there when it finds the node
/// stuck — never joined with its bootstrap token expired, or its identity expired while the
/// cluster was off — and the agent joins with it.
pub const RECOVERY_TOKEN_FILE: &str = "/var/lib/pangaea/seed/recovery-token";

/// Where a cloud without a seed the controller can write to (Compute Engine) makes a
/// recovery token appear instead: this key of the instance's metadata, which the agent
/// reads from the metadata server.
pub const RECOVERY_TOKEN_METADATA_KEY: &str = "pangaea-recovery-token";

/// The metadata server of every Compute Engine VM (link-local, answered by its host).
pub const GCE_METADATA_SERVER: &str = "169.254.169.254";

use rand::Rng;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Characters in a token's public id.
pub const ID_LEN: usize = 6;
/// Characters in a token's secret.
pub const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The text is not a bootstrap token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "malformed bootstrap token: expected <6 chars>.<16 chars> from [a-z0-9], like \"abcdef.0123456789abcdef\""
)]
pub struct MalformedToken;

/// `text` with the secret of every bootstrap token in it replaced (`ID.<redacted>`: the id
/// still names the token, as `pangaea-ctl token list` shows it). What any text shown to
/// people that may hold a token goes through (a node's user-data, a log bundle).
pub fn redact_tokens(text: &str) -> String {
    let is_token_char = |c: char| c == '.' || (c.is_ascii() && ALPHABET.contains(&(c as u8)));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_token_char) {
        out.push_str(&rest[..start]);
        let run = &rest[start..];
        let end = run.find(|c: char| !is_token_char(c)).unwrap_or(run.len());
        let word = &run[..end];
        match BootstrapToken::parse(word) {
            Ok(t) => {
                out.push_str(t.id());
                out.push_str(".<redacted>");
            }
            Err(_) => out.push_str(word),
        }
        rest = &run[end..];
    }
    out.push_str(rest);
    out
}

/// A parsed token. `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl BootstrapToken {
    /// A new random token.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut pick = |n| {
            (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        BootstrapToken {
            id: pick(ID_LEN),
            secret: pick(SECRET_LEN),
        }
    }

    /// Reads `<id>.<secret>` (surrounding whitespace is ignored).
    pub fn parse(s: &str) -> Result<Self, MalformedToken> {
        let (id, secret) = s.trim().split_once('.').ok_or(MalformedToken)?;
        let valid = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| ALPHABET.contains(&b))
        };
        if !valid(id, ID_LEN) || !valid(secret, SECRET_LEN) {
            return Err(MalformedToken);
        }
        Ok(BootstrapToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The public id, under which the controller stores the token.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The full `<id>.<secret>` string, to hand to the node once.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// What the controller stores.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_bytes()).into()
    }

    /// Constant-time comparison of this token's secret against a stored hash.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        bool::from(self.secret_hash().as_slice().ct_eq(stored_hash))
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.<redacted>", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_match() {
        let t = BootstrapToken::generate();
        let s = t.expose();
        assert_eq!(s.len(), ID_LEN + 1 + SECRET_LEN);
        let p = BootstrapToken::parse(&s).unwrap();
        assert_eq!(p, t);
        assert!(p.matches(&t.secret_hash()));
    }

    #[test]
    fn wrong_secret_does_not_match() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let other = BootstrapToken::parse("abcdef.0123456789abcdeg").unwrap();
        assert!(!other.matches(&t.secret_hash()));
        assert!(!t.matches(&[0u8; 31]));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            "abcde.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde!",
            "abcdef.0123456789abcdef0",
        ] {
            assert_eq!(BootstrapToken::parse(bad), Err(MalformedToken), "{bad}");
        }
    }

    #[test]
    fn display_hides_the_secret() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        assert!(!format!("{t} {t:?}").contains("0123456789"));
    }

    #[test]
    fn tokens_are_redacted_wherever_they_stand_and_nothing_else_changes() {
        let t = BootstrapToken::generate().expose();
        let (id, secret) = t.split_once('.').unwrap();
        let text = format!("content: \"{t}\"\nurl: http://10.0.0.1:7444/agent\nsum: {t}");
        let r = redact_tokens(&text);
        assert!(!r.contains(secret), "{r}");
        assert_eq!(
            r,
            format!(
                "content: \"{id}.<redacted>\"\nurl: http://10.0.0.1:7444/agent\nsum: {id}.<redacted>"
            )
        );
        assert_eq!(redact_tokens("abc.def é x.y"), "abc.def é x.y");
    }
}
