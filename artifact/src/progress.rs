//! What each artifact download is doing, for the agent's health report and the CLI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where one artifact's installation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Being downloaded (or checked, or extracted).
    Downloading,
    /// An attempt failed; waiting to try again.
    Retrying,
    /// In place and verified.
    Installed,
    /// Given up on; `error` says why.
    Failed,
}

impl State {
    /// The state as health reports and the CLI show it (`downloading`, `installed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Downloading => "downloading",
            State::Retrying => "retrying",
            State::Installed => "installed",
            State::Failed => "failed",
        }
    }
}

/// One artifact's installation, as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Where it is downloaded from.
    pub url: String,
    /// Where it stands.
    pub state: State,
    /// Bytes of the content on disk so far, counting a resumed prefix.
    pub bytes_done: u64,
    /// Size of the content, when the source said.
    pub bytes_total: Option<u64>,
    /// Where this attempt started (non-zero when resumed).
    pub resumed_from: u64,
    /// The last error, while retrying or after failing.
    pub error: Option<String>,
}

/// Shared table of artifact states, keyed by destination.
#[derive(Clone, Default)]
pub struct Progress {
    inner: Arc<Mutex<BTreeMap<PathBuf, Status>>>,
}

impl Progress {
    /// Every artifact's status, by destination.
    pub fn snapshot(&self) -> Vec<(PathBuf, Status)> {
        self.inner
            .lock()
            .expect("progress lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The status of the artifact installed at `dest`.
    pub fn get(&self, dest: &Path) -> Option<Status> {
        self.inner.lock().expect("progress lock").get(dest).cloned()
    }

    pub(crate) fn update(&self, dest: &Path, f: impl FnOnce(&mut Status)) {
        let mut map = self.inner.lock().expect("progress lock");
        let entry = map.entry(dest.to_owned()).or_insert_with(|| Status {
            url: String::new(),
            state: State::Downloading,
            bytes_done: 0,
            bytes_total: None,
            resumed_from: 0,
            error: None,
        });
        f(entry);
    }

    /// Forgets artifacts that are no longer wanted.
    pub fn retain(&self, keep: impl Fn(&Path) -> bool) {
        self.inner
            .lock()
            .expect("progress lock")
            .retain(|k, _| keep(k));
    }
}
