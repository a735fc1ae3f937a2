//! The process's file-descriptor limit. Every agent connection, idle or not, holds a file
//! descriptor, and the usual soft limit (1024) is far below what a fleet needs, so
//! `pangaea-ctl serve` raises it to the hard limit at start, and sizes its connection cap
//! to what it got (see [`crate::service::Limits::file_descriptors`]).

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
pub fn raise_nofile() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening #6 (file descriptors): the soft limit is raised to the hard limit.
    #[test]
    fn the_soft_limit_reaches_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(raise_nofile().unwrap(), hard);
    }
}
