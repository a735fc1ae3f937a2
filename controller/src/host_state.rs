//! Where `pangaea-ctl` keeps what belongs to this host rather than to one cluster: the
//! cluster registry ([`crate::registry`]) and the log file. `$PANGAEA_HOST_STATE`, else
//! `/var/lib/pangaea` for root, else `$XDG_STATE_HOME/pangaea` (`~/.local/state/pangaea`).

use std::path::PathBuf;

/// The host's state directory (created by whoever writes into it).
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PANGAEA_HOST_STATE") {
        return PathBuf::from(d);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/pangaea");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("pangaea")
}

/// The log file: log records of every command but `serve` go here unless `-v`.
pub fn log_file() -> PathBuf {
    dir().join("pangaea-ctl.log")
}
