//! What each artifact download is doing, for the agent's health report and the CLI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Downloading,
    Retrying,
    Installed,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Downloading => "downloading",
            State::Retrying => "retrying",
            State::Installed => "installed",
            State::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub url: String,
    pub state: State,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    /// Where this attempt started (non-zero when resumed).
    pub resumed_from: u64,
    pub error: Option<String>,
}

/// Shared table of artifact states, keyed by destination.
#[derive(Clone, Default)]
pub struct Progress {
    inner: Arc<Mutex<BTreeMap<PathBuf, Status>>>,
}

impl Progress {
    pub fn snapshot(&self) -> Vec<(PathBuf, Status)> {
        self.inner
            .lock()
            .expect("progress lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

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
