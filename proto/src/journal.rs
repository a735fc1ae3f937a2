//! [`JournalRead`]: the one place a journal read becomes a `journalctl` command line, used
//! by the agent that runs it on its node and by `pangaea-ctl logs` when it has to go
//! through the provider's shell instead (a node whose agent is not connected).

use crate::v1::JournalRead;

/// The program [`JournalRead::args`] are for (found on the node's PATH).
pub const JOURNALCTL: &str = "journalctl";

impl JournalRead {
    /// `journalctl`'s arguments for this read (the program name not included). Every
    /// value is one argument of its own: nothing is read by a shell on the node.
    pub fn args(&self) -> Vec<String> {
        let mut argv: Vec<String> = vec!["--no-pager".into(), "-o".into(), "short-iso".into()];
        if self.units.is_empty() {
            argv.push("-b".into());
        }
        for u in &self.units {
            // `--unit=` keeps a name that starts with `-` a name.
            argv.push(format!("--unit={u}"));
        }
        if !self.since.is_empty() {
            argv.push(format!("--since={}", self.since));
        } else if !self.follow && self.lines > 0 {
            argv.push(format!("--lines={}", self.lines));
        }
        if self.follow {
            argv.push("--follow".into());
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(units: &[&str], since: &str, lines: u32, follow: bool) -> Vec<String> {
        JournalRead {
            units: units.iter().map(|u| u.to_string()).collect(),
            since: since.into(),
            lines,
            follow,
        }
        .args()
    }

    #[test]
    fn every_value_is_one_argument() {
        assert_eq!(
            read(&[], "", 200, false),
            ["--no-pager", "-o", "short-iso", "-b", "--lines=200"]
        );
        assert_eq!(
            read(&["etcd", "kubelet"], "-1h", 200, true),
            [
                "--no-pager",
                "-o",
                "short-iso",
                "--unit=etcd",
                "--unit=kubelet",
                "--since=-1h",
                "--follow"
            ]
        );
        assert_eq!(
            read(&["--rotate"], "today; reboot", 0, false),
            [
                "--no-pager",
                "-o",
                "short-iso",
                "--unit=--rotate",
                "--since=today; reboot"
            ]
        );
    }
}
