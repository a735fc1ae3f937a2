//! The operator's kubeconfig: the cluster's admin credentials merged into the file kubectl
//! reads, under one name (`pangaea-<cluster>`, [`entry_name`]) for its cluster, user and
//! context, as kind (`kind-<name>`) and k3d do. Other entries are kept as they are; `down
//! --purge` removes exactly these three ([`remove_from`]).
//!
//! The file is the first of `$KUBECONFIG`, else `~/.kube/config` ([`default_file`]); under
//! `sudo` that is the invoking user's, owned by them, since it is their kubectl that reads
//! it. Writers take kubectl's own lock (`<file>.lock`, created exclusively) and replace the
//! file atomically, so a kubectl writing at the same moment is never interleaved with.

use pangaea_core::fsutil;
use serde_norway::{Mapping, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name of the cluster's cluster, user and context entries in the operator's file.
pub fn entry_name(cluster: &str) -> String {
    format!("pangaea-{cluster}")
}

/// Why the operator's kubeconfig could not be updated (it is then left as it was).
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// The file is not a kubeconfig this code can merge into.
    #[error(
        "{path}: not a kubeconfig ({message}); nothing was changed: fix or move it, or set \
         KUBECONFIG to another file"
    )]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong, with line and column where YAML says.
        message: String,
    },
    /// Another writer holds the lock.
    #[error(
        "{lock} exists: another kubectl or pangaea-ctl is writing {path}; if none is, \
         remove {lock}"
    )]
    Locked {
        /// The file.
        path: String,
        /// Its lock file.
        lock: String,
    },
    /// Reading or writing failed.
    #[error("{what} {path}: {message}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        message: String,
    },
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> KubeconfigError + 'a {
    move |e| KubeconfigError::Io {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The file kubectl reads first: the first entry of `$KUBECONFIG`, else `~/.kube/config`
/// of the user who ran `sudo` (else of `$HOME`).
pub fn default_file() -> PathBuf {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .as_deref()
        .and_then(|v| std::env::split_paths(v).find(|p| !p.as_os_str().is_empty()))
    {
        return first;
    }
    let home = sudo_user()
        .map(|u| u.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".kube").join("config")
}

/// The user who ran `sudo`, when this process is root through it.
fn sudo_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let name = std::env::var("SUDO_USER").ok()?;
    nix::unistd::User::from_name(&name).ok().flatten()
}

/// `existing` (a kubeconfig, possibly empty) with `admin`'s cluster and user added under
/// `name`, replacing entries of that name, and a context `name` joining them; the current
/// context becomes `name` when `switch` or when there was none.
pub fn merge(existing: &str, admin: &str, name: &str, switch: bool) -> Result<String, String> {
    let mut doc = parse(existing)?;
    let admin = parse(admin)?;
    let first = |list: &str| -> Result<Value, String> {
        let entry = admin
            .get(list)
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .ok_or_else(|| format!("the admin kubeconfig has no {list}"))?;
        Ok(entry
            .get(&list[..list.len() - 1])
            .cloned()
            .unwrap_or_default())
    };
    let named = |kind: &str, body: Value| -> Value {
        let mut m = Mapping::new();
        m.insert("name".into(), name.into());
        m.insert(kind.into(), body);
        Value::Mapping(m)
    };
    let mut context = Mapping::new();
    context.insert("cluster".into(), name.into());
    context.insert("user".into(), name.into());
    upsert(&mut doc, "clusters", named("cluster", first("clusters")?))?;
    upsert(&mut doc, "users", named("user", first("users")?))?;
    upsert(
        &mut doc,
        "contexts",
        named("context", Value::Mapping(context)),
    )?;
    let current = doc
        .get("current-context")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if switch || current.is_empty() {
        doc.insert("current-context".into(), name.into());
    }
    for (k, v) in [("apiVersion", "v1"), ("kind", "Config")] {
        doc.entry(k.into()).or_insert(v.into());
    }
    serde_norway::to_string(&Value::Mapping(doc)).map_err(|e| e.to_string())
}

/// `existing` without the entries named `name` (and without a current context that was
/// `name`); `None` when it has none of them.
pub fn remove(existing: &str, name: &str) -> Result<Option<String>, String> {
    let mut doc = parse(existing)?;
    let mut changed = false;
    for list in ["clusters", "users", "contexts"] {
        if let Some(Value::Sequence(s)) = doc.get_mut(list) {
            let before = s.len();
            s.retain(|e| e.get("name").and_then(Value::as_str) != Some(name));
            changed |= s.len() != before;
        }
    }
    if doc.get("current-context").and_then(Value::as_str) == Some(name) {
        doc.insert("current-context".into(), "".into());
        changed = true;
    }
    if !changed {
        return Ok(None);
    }
    serde_norway::to_string(&Value::Mapping(doc))
        .map(Some)
        .map_err(|e| e.to_string())
}

fn parse(text: &str) -> Result<Mapping, String> {
    if text.trim().is_empty() {
        return Ok(Mapping::new());
    }
    match serde_norway::from_str::<Value>(text).map_err(|e| e.to_string())? {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        _ => Err("the top level is not a mapping".into()),
    }
}

/// Replaces the entry of `list` with `entry`'s name, or appends it.
fn upsert(doc: &mut Mapping, list: &str, entry: Value) -> Result<(), String> {
    let seq = doc
        .entry(list.into())
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if seq.is_null() {
        *seq = Value::Sequence(Vec::new());
    }
    let Value::Sequence(seq) = seq else {
        return Err(format!("{list} is not a list"));
    };
    let name = entry.get("name").cloned();
    match seq.iter_mut().find(|e| e.get("name") == name.as_ref()) {
        Some(e) => *e = entry,
        None => seq.push(entry),
    }
    Ok(())
}

/// What [`merge_into`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    /// The file written.
    pub path: PathBuf,
    /// Whether the current context is now the cluster's.
    pub current: bool,
}

/// Merges `admin` into `path` under [`entry_name`]`(cluster)` (see [`merge`]).
pub fn merge_into(
    path: &Path,
    admin: &str,
    cluster: &str,
    switch: bool,
) -> Result<Merged, KubeconfigError> {
    let name = entry_name(cluster);
    let merged = update(path, |existing| {
        merge(existing, admin, &name, switch).map(Some)
    })?;
    let current = merged
        .as_deref()
        .and_then(|t| parse(t).ok())
        .and_then(|d| {
            d.get("current-context")
                .and_then(Value::as_str)
                .map(|c| c == name)
        })
        .unwrap_or(false);
    Ok(Merged {
        path: path.to_owned(),
        current,
    })
}

/// Removes the cluster's entries from `path`; whether there were any. A missing file has
/// none.
pub fn remove_from(path: &Path, cluster: &str) -> Result<bool, KubeconfigError> {
    if !path.exists() {
        return Ok(false);
    }
    let name = entry_name(cluster);
    Ok(update(path, |existing| remove(existing, &name))?.is_some())
}

/// Under the file's lock: reads `path` (missing: empty), asks `change` for the new text
/// (`None`: leave it), writes it atomically with the old file's owner and mode (a new
/// file: 0600, owned by the `sudo` user). Returns the text written.
fn update(
    path: &Path,
    change: impl FnOnce(&str) -> Result<Option<String>, String>,
) -> Result<Option<String>, KubeconfigError> {
    // Before the lock, which creates the directory: a directory made here is the sudo
    // user's too.
    let created_dir = path.parent().filter(|d| !d.exists()).map(Path::to_owned);
    let _lock = Lock::take(path, LOCK_WAIT)?;
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("read", path)(e)),
    };
    let text = change(existing.as_deref().unwrap_or_default()).map_err(|message| {
        KubeconfigError::Malformed {
            path: path.display().to_string(),
            message,
        }
    })?;
    let Some(text) = text else {
        return Ok(None);
    };
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok();
    let mode = meta.as_ref().map_or(0o600, |m| m.mode() & 0o7777);
    fsutil::atomic_write(path, text.as_bytes(), mode).map_err(|e| KubeconfigError::Io {
        what: "write",
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let owner = match &meta {
        Some(m) => Some((m.uid(), m.gid())),
        None => sudo_user().map(|u| (u.uid.as_raw(), u.gid.as_raw())),
    };
    if let Some((uid, gid)) = owner {
        let chown = |p: &Path| {
            nix::unistd::chown(p, Some(uid.into()), Some(gid.into()))
                .map_err(|e| io("chown", p)(e.into()))
        };
        chown(path)?;
        if let Some(dir) = created_dir.filter(|_| meta.is_none()) {
            chown(&dir)?;
        }
    }
    Ok(Some(text))
}

/// How long a lock another writer holds is waited for.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// kubectl's lock on a kubeconfig file: `<file>.lock`, created exclusively, removed when
/// dropped.
struct Lock(PathBuf);

impl Lock {
    /// Takes the lock, waiting at most `wait` for another holder.
    fn take(path: &Path, wait: Duration) -> Result<Lock, KubeconfigError> {
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        }
        let deadline = Instant::now() + wait;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(_) => return Ok(Lock(lock)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if Instant::now() >= deadline {
                        return Err(KubeconfigError::Locked {
                            path: path.display().to_string(),
                            lock: lock.display().to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(io("create", &lock)(e)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "apiVersion: v1
kind: Config
clusters:
  - name: demo
    cluster:
      certificate-authority-data: Q0E=
      server: https://10.0.0.1:6443
users:
  - name: kubernetes-admin
    user:
      client-certificate-data: Q0VSVA==
      client-key-data: S0VZ
contexts:
  - name: kubernetes-admin@demo
    context:
      cluster: demo
      user: kubernetes-admin
current-context: kubernetes-admin@demo
";

    const OTHER: &str = "apiVersion: v1
kind: Config
clusters:
  - name: prod
    cluster:
      server: https://prod.example:6443
users:
  - name: prod-admin
    user:
      token: secret
contexts:
  - name: prod
    context:
      cluster: prod
      user: prod-admin
      namespace: shop
current-context: prod
preferences: {}
";

    fn doc(text: &str) -> Mapping {
        parse(text).unwrap()
    }

    fn names(d: &Mapping, list: &str) -> Vec<String> {
        d[list]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn merging_keeps_other_entries_and_the_current_context_unless_switching() {
        let merged = doc(&merge(OTHER, ADMIN, "pangaea-demo", false).unwrap());
        assert_eq!(names(&merged, "clusters"), ["prod", "pangaea-demo"]);
        assert_eq!(names(&merged, "users"), ["prod-admin", "pangaea-demo"]);
        assert_eq!(names(&merged, "contexts"), ["prod", "pangaea-demo"]);
        assert_eq!(merged["current-context"].as_str(), Some("prod"));
        assert_eq!(
            merged["contexts"][0]["context"]["namespace"].as_str(),
            Some("shop")
        );
        assert_eq!(merged["users"][0]["user"]["token"].as_str(), Some("secret"));
        assert!(merged.contains_key("preferences"));
        let ours = &merged["users"][1]["user"];
        assert_eq!(ours["client-key-data"].as_str(), Some("S0VZ"));
        assert_eq!(
            merged["clusters"][1]["cluster"]["server"].as_str(),
            Some("https://10.0.0.1:6443")
        );
        assert_eq!(
            merged["contexts"][1]["context"]["user"].as_str(),
            Some("pangaea-demo")
        );

        let switched = doc(&merge(OTHER, ADMIN, "pangaea-demo", true).unwrap());
        assert_eq!(switched["current-context"].as_str(), Some("pangaea-demo"));
    }

    #[test]
    fn merging_again_replaces_in_place_and_an_empty_file_becomes_a_kubeconfig() {
        let once = merge("", ADMIN, "pangaea-demo", false).unwrap();
        let d = doc(&once);
        assert_eq!(d["current-context"].as_str(), Some("pangaea-demo"));
        assert_eq!(d["kind"].as_str(), Some("Config"));
        let twice = merge(
            &once,
            &ADMIN.replace("10.0.0.1", "10.0.0.9"),
            "pangaea-demo",
            false,
        )
        .unwrap();
        let d = doc(&twice);
        assert_eq!(names(&d, "clusters"), ["pangaea-demo"]);
        assert_eq!(
            d["clusters"][0]["cluster"]["server"].as_str(),
            Some("https://10.0.0.9:6443")
        );
    }

    #[test]
    fn removing_takes_exactly_the_clusters_entries() {
        let merged = merge(OTHER, ADMIN, "pangaea-demo", true).unwrap();
        let removed = doc(&remove(&merged, "pangaea-demo").unwrap().unwrap());
        assert_eq!(names(&removed, "clusters"), ["prod"]);
        assert_eq!(names(&removed, "users"), ["prod-admin"]);
        assert_eq!(names(&removed, "contexts"), ["prod"]);
        assert_eq!(removed["current-context"].as_str(), Some(""));
        assert_eq!(remove(OTHER, "pangaea-demo").unwrap(), None);
    }

    #[test]
    fn a_file_that_is_not_a_kubeconfig_is_refused_with_its_place() {
        let e = merge("clusters: [\n", ADMIN, "pangaea-demo", false).unwrap_err();
        assert!(e.contains("line"), "{e}");
        let e = merge("- a\n- b\n", ADMIN, "pangaea-demo", false).unwrap_err();
        assert!(e.contains("not a mapping"), "{e}");
        let e = merge("clusters: 3\n", ADMIN, "pangaea-demo", false).unwrap_err();
        assert!(e.contains("clusters is not a list"), "{e}");
    }

    #[test]
    fn a_held_lock_is_refused_naming_it_and_merge_into_leaves_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, OTHER).unwrap();
        let held = Lock::take(&path, Duration::ZERO).unwrap();
        let e = Lock::take(&path, Duration::from_millis(100)).err().unwrap();
        assert!(e.to_string().contains("config.lock exists"), "{e}");
        drop(held);
        let m = merge_into(&path, ADMIN, "demo", false).unwrap();
        assert!(!m.current);
        assert!(!dir.path().join("config.lock").exists());
        assert!(remove_from(&path, "demo").unwrap());
        assert!(!remove_from(&path, "demo").unwrap());
    }
}
