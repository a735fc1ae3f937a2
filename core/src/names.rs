//! Validated names. A node name ends up in certificate subjects, file paths and systemd unit
//! arguments, so it is restricted to a DNS label (RFC 1123): lowercase letters, digits and
//! `-`, 1 to 63 characters, not starting or ending with `-`.

use std::fmt;

/// A name that is not a valid node name, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid node name {name:?}: {reason} (use 1-63 lowercase letters, digits or '-', like \"node-1\")"
)]
pub struct InvalidName {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A node name, valid by construction (built with `TryFrom`).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A node name reads as the string it is (validation happens once, at construction).
impl std::ops::Deref for NodeName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A node name is a safe file name (a DNS label: no `/`, no `..`), so it names per-node
/// directories directly.
impl AsRef<std::path::Path> for NodeName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl AsRef<std::ffi::OsStr> for NodeName {
    fn as_ref(&self) -> &std::ffi::OsStr {
        std::ffi::OsStr::new(&self.0)
    }
}

impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl TryFrom<String> for NodeName {
    type Error = InvalidName;
    fn try_from(name: String) -> Result<Self, InvalidName> {
        let bad = |reason| {
            Err(InvalidName {
                name: name.clone(),
                reason,
            })
        };
        if name.is_empty() || name.len() > 63 {
            return bad("length must be 1 to 63");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("only lowercase letters, digits and '-' are allowed");
        }
        if name.starts_with('-') || name.ends_with('-') {
            return bad("must not start or end with '-'");
        }
        Ok(NodeName(name))
    }
}

impl TryFrom<&str> for NodeName {
    type Error = InvalidName;
    fn try_from(name: &str) -> Result<Self, InvalidName> {
        NodeName::try_from(name.to_owned())
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        NodeName::try_from(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "node-1", "n0", &"x".repeat(63)] {
            assert!(NodeName::try_from(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "-a",
            "a-",
            "Node",
            "a_b",
            "a.b",
            "a/b",
            "../x",
            &"x".repeat(64),
        ] {
            assert!(NodeName::try_from(bad).is_err(), "{bad}");
        }
    }
}
