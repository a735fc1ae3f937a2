//! Editing `pangaea.yaml` in place, so the file stays the one source of truth:
//! `pangaea-ctl node remove` records the node in `removedNodes` (a later `up` does not bring
//! it back), and `pangaea-ctl node add` raises a pool's `count` (a later `up` keeps the new
//! nodes).
//!
//! The file is the operator's: a round trip through serde would drop their comments, blank
//! lines and key order, so each edit is textual and touches only one entry, in the forms
//! people write by hand.
//!
//! `removedNodes`:
//! * no `removedNodes` key: a commented `removedNodes: [NAME]` line is appended;
//! * a flow list on one line, `removedNodes: [node-2]  # …`: the name is added in it;
//! * a block list, `removedNodes:` then `  - node-2` lines: a `- NAME` item is added after
//!   the last, indented like it;
//! * an empty `removedNodes:` (null): it becomes `removedNodes: [NAME]`.
//!
//! A pool's `count`:
//! * no `pools` key (the built-in default pool): the default pool is written out with the
//!   new count, after a comment;
//! * a block-style pool with a `count:` line: the number on it is replaced;
//! * a block-style pool without one: a `count:` line is added after the pool's first line.
//!
//! `artifactSource` (`pangaea-ctl up --artifact-source`):
//! * no `artifactSource` key: the line is appended;
//! * a top-level `artifactSource: VALUE  # …` line: the value is replaced, the comment kept.
//!
//! Anything else is refused with what to do (edit the file by hand). Every edit is checked
//! by loading the result with [`Loaded::parse`]: it must give exactly the configuration
//! intended, or the edit is refused and nothing written.

use crate::artifact_set::ArtifactSource;
use crate::config::{ConfigError, Loaded};
use crate::locate::locate_exact;
use pangaea_core::NodeName;
use pangaea_core::fsutil::{FsError, atomic_write};
use pangaea_core::names::InvalidName;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The comment line written above a `removedNodes` line this editor adds.
pub const REMOVED_NODES_COMMENT: &str =
    "# Nodes removed with `pangaea-ctl node remove` (their numbers are not reused).";

/// The comment line written above the default pool when `node add` writes it out.
pub const POOLS_COMMENT: &str =
    "# The default pool, written out by `pangaea-ctl node add` to record its new count.";

/// Permission bits of a `pangaea.yaml` this editor creates.
const NEW_FILE_MODE: u32 = 0o644;

/// Why `pangaea.yaml` could not be edited; in every case the file is unchanged. `edit` is
/// what was intended, as an instruction (`add node-3 to removedNodes`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigEditError {
    /// The name is not a node name.
    #[error("cannot add {name:?} to removedNodes: {source}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        #[source]
        source: InvalidName,
    },
    /// The configuration does not load as it is (`removedNodes` not a list, for one).
    #[error("{source}; edit {} by hand: fix that, and {edit}", source.file)]
    Invalid {
        /// The edit intended.
        edit: String,
        /// Why the configuration does not load (file, line and column).
        #[source]
        source: ConfigError,
    },
    /// The configuration refuses the result: the node is not one the pools make, it is the
    /// last with the etcd or control-plane role, the pool does not exist, the address
    /// range is too small.
    #[error("cannot {change}: {source}")]
    Refused {
        /// The change, as `remove node-3` or `grow pool node to 5 nodes`.
        change: String,
        /// What validation says of the configuration with the change.
        #[source]
        source: ConfigError,
    },
    /// The entry is written in a form this editor does not rewrite.
    #[error(
        "{file}:{line}: {key} {what}, which pangaea-ctl does not rewrite; edit {file} by hand: {edit}"
    )]
    Unsupported {
        /// The configuration file, as named in errors.
        file: String,
        /// 1-based line of the entry.
        line: usize,
        /// The entry (`removedNodes`, `pools`).
        key: &'static str,
        /// What the entry is, e.g. `is a flow list over several lines`.
        what: &'static str,
        /// The edit intended.
        edit: String,
    },
    /// The edited text did not load as the configuration intended.
    #[error(
        "{file}: the edit in place ({edit}) went wrong ({problem}); the file is unchanged: edit {file} by hand: {edit}"
    )]
    Check {
        /// The configuration file, as named in errors.
        file: String,
        /// The edit intended.
        edit: String,
        /// What was wrong with the edited text.
        problem: String,
    },
    /// The configuration file could not be read (other than missing).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error reading it.
        #[source]
        source: std::io::Error,
    },
    /// The edited configuration could not be written.
    #[error("cannot {edit}: {source}")]
    Write {
        /// The edit intended.
        edit: String,
        /// The step that failed, with its path.
        #[source]
        source: FsError,
    },
}

/// One kind of in-place edit.
trait Edit {
    /// The edit as an instruction for the operator (`add node-3 to removedNodes`).
    fn instruction(&self) -> String;
    /// The change, for refusals (`remove node-3`).
    fn change(&self) -> String;
    /// The top-level key it rewrites, for errors.
    fn key(&self) -> &'static str;
    /// Whether `before` says it already.
    fn done(&self, before: &Loaded) -> bool;
    /// The configuration it must give.
    fn expected(&self, before: &Loaded) -> Result<Loaded, ConfigError>;
    /// The textual edit; on a form it does not rewrite, the 1-based line of the entry and
    /// what the form is.
    fn edit_text(&self, text: &str) -> Result<String, (usize, &'static str)>;
}

struct AddRemoved<'a>(&'a NodeName);

impl Edit for AddRemoved<'_> {
    fn instruction(&self) -> String {
        format!("add {} to removedNodes", self.0)
    }
    fn change(&self) -> String {
        format!("remove {}", self.0)
    }
    fn key(&self) -> &'static str {
        "removedNodes"
    }
    fn done(&self, before: &Loaded) -> bool {
        before.config.is_removed(self.0)
    }
    fn expected(&self, before: &Loaded) -> Result<Loaded, ConfigError> {
        before.with_removed_node(self.0.clone())
    }
    fn edit_text(&self, text: &str) -> Result<String, (usize, &'static str)> {
        edit_removed_nodes(text, self.0)
    }
}

struct PoolCount<'a> {
    pool: &'a str,
    count: u32,
}

impl Edit for PoolCount<'_> {
    fn instruction(&self) -> String {
        format!("set count: {} in pool {}", self.count, self.pool)
    }
    fn change(&self) -> String {
        format!("set pool {} to {} nodes", self.pool, self.count)
    }
    fn key(&self) -> &'static str {
        "pools"
    }
    fn done(&self, before: &Loaded) -> bool {
        before
            .config
            .pools
            .iter()
            .any(|p| p.name == self.pool && p.count == self.count)
    }
    fn expected(&self, before: &Loaded) -> Result<Loaded, ConfigError> {
        if !before.config.pools.iter().any(|p| p.name == self.pool) {
            let names: Vec<&str> = before
                .config
                .pools
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            return Err(ConfigError {
                file: before.file.clone(),
                location: None,
                message: format!(
                    "there is no pool {:?} (pools: {})",
                    self.pool,
                    names.join(", ")
                ),
            });
        }
        before.with_pool_count(self.pool, self.count)
    }
    fn edit_text(&self, text: &str) -> Result<String, (usize, &'static str)> {
        edit_pool_count(text, self.pool, self.count)
    }
}

struct SetArtifactSource(ArtifactSource);

impl Edit for SetArtifactSource {
    fn instruction(&self) -> String {
        format!("set artifactSource: {}", self.0.as_str())
    }
    fn change(&self) -> String {
        format!("take the cluster's binaries from {}", self.0.as_str())
    }
    fn key(&self) -> &'static str {
        "artifactSource"
    }
    fn done(&self, before: &Loaded) -> bool {
        before.config.artifact_source == self.0
    }
    fn expected(&self, before: &Loaded) -> Result<Loaded, ConfigError> {
        before.with_artifact_source(self.0)
    }
    fn edit_text(&self, text: &str) -> Result<String, (usize, &'static str)> {
        let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let value = self.0.as_str();
        let lines = lines(text);
        let Some((key, after_colon)) = lines
            .iter()
            .find_map(|l| top_level_key(l.content, "artifactSource").map(|v| (l, v)))
        else {
            let sep = if text.is_empty() || text.ends_with('\n') {
                ""
            } else {
                nl
            };
            return Ok(format!("{text}{sep}artifactSource: {value}{nl}"));
        };
        let rest = &key.content[after_colon..];
        let old = rest[..comment_start(rest)].trim_end();
        let at = key.start + after_colon;
        let from = at + (old.len() - old.trim_start().len());
        Ok(format!(
            "{}{value}{}",
            &text[..from],
            &text[at + old.len()..]
        ))
    }
}

/// `text` with `artifactSource: SOURCE`, everything else byte for byte; `text` itself when
/// it says so already. Errors name the file `pangaea.yaml`.
///
/// ```
/// use pangaea_compiler::artifact_set::ArtifactSource;
/// let text = "name: demo\nartifactSource: pinned  # upstream\n";
/// let edited =
///     pangaea_compiler::config_edit::set_artifact_source(text, ArtifactSource::OsPackages).unwrap();
/// assert_eq!(edited, "name: demo\nartifactSource: os-packages  # upstream\n");
/// ```
pub fn set_artifact_source(text: &str, source: ArtifactSource) -> Result<String, ConfigEditError> {
    apply(
        "pangaea.yaml",
        Path::new("."),
        text,
        &SetArtifactSource(source),
    )
}

/// Sets `artifactSource` in the configuration at `path` with [`set_artifact_source`], as
/// [`rewrite`] does.
pub fn write_artifact_source(path: &Path, source: ArtifactSource) -> Result<(), ConfigEditError> {
    rewrite(path, &SetArtifactSource(source))
}

/// `text` (a `pangaea.yaml`) with `name` added to `removedNodes`, everything else byte for
/// byte; `text` itself when the name is already there. Errors name the file
/// `pangaea.yaml`.
///
/// ```
/// let text = "name: demo  # mine\nremovedNodes: [node-2]  # by hand\n";
/// let edited = pangaea_compiler::config_edit::add_removed_node(text, "node-3").unwrap();
/// assert_eq!(edited, "name: demo  # mine\nremovedNodes: [node-2, node-3]  # by hand\n");
/// ```
pub fn add_removed_node(text: &str, name: &str) -> Result<String, ConfigEditError> {
    apply(
        "pangaea.yaml",
        Path::new("."),
        text,
        &AddRemoved(&node_name(name)?),
    )
}

/// Adds `name` to `removedNodes` of the configuration at `path` with
/// [`add_removed_node`], as [`rewrite`] does.
pub fn write_removed_node(path: &Path, name: &str) -> Result<(), ConfigEditError> {
    rewrite(path, &AddRemoved(&node_name(name)?))
}

/// `text` with pool `pool` at `count` nodes, everything else byte for byte; `text` itself
/// when the pool has that count already. Errors name the file `pangaea.yaml`.
///
/// ```
/// let text = "pools:\n  - name: node\n    count: 3 # three\n";
/// let edited = pangaea_compiler::config_edit::set_pool_count(text, "node", 5).unwrap();
/// assert_eq!(edited, "pools:\n  - name: node\n    count: 5 # three\n");
/// ```
pub fn set_pool_count(text: &str, pool: &str, count: u32) -> Result<String, ConfigEditError> {
    apply(
        "pangaea.yaml",
        Path::new("."),
        text,
        &PoolCount { pool, count },
    )
}

/// Sets the count of pool `pool` in the configuration at `path` with [`set_pool_count`],
/// as [`rewrite`] does.
pub fn write_pool_count(path: &Path, pool: &str, count: u32) -> Result<(), ConfigEditError> {
    rewrite(path, &PoolCount { pool, count })
}

/// Applies `edit` to the configuration at `path`, replacing the file atomically with its
/// permission bits kept (a symlink's target is the file edited). A missing file is the
/// built-in default configuration: it is created (mode 0644) with only the edited entry.
/// Nothing is written when the file says it already. The file is read, then replaced: an
/// edit made by someone else in between is lost, so callers do not run two of these at
/// once.
fn rewrite(path: &Path, edit: &dyn Edit) -> Result<(), ConfigEditError> {
    let read_error = |source| ConfigEditError::Read {
        path: path.to_owned(),
        source,
    };
    // atomic_write replaces the path it is given: write to the file a symlink names.
    let (target, text, mode) = match std::fs::canonicalize(path) {
        Ok(target) => {
            let mode = std::fs::metadata(&target)
                .map_err(read_error)?
                .permissions()
                .mode()
                & 0o7777;
            let text = std::fs::read_to_string(&target).map_err(read_error)?;
            (target, text, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (path.to_owned(), String::new(), NEW_FILE_MODE)
        }
        Err(e) => return Err(read_error(e)),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let edited = apply(&path.display().to_string(), dir, &text, edit)?;
    if edited == text {
        return Ok(());
    }
    atomic_write(&target, edited.as_bytes(), mode).map_err(|source| ConfigEditError::Write {
        edit: edit.instruction(),
        source,
    })
}

fn node_name(name: &str) -> Result<NodeName, ConfigEditError> {
    NodeName::try_from(name).map_err(|source| ConfigEditError::InvalidName {
        name: name.into(),
        source,
    })
}

/// `edit` applied to `text`, for the file named `file` in errors, with relative paths
/// under `dir`; checked as the module documentation says.
fn apply(file: &str, dir: &Path, text: &str, edit: &dyn Edit) -> Result<String, ConfigEditError> {
    let before = Loaded::parse(file, text, dir).map_err(|source| ConfigEditError::Invalid {
        edit: edit.instruction(),
        source,
    })?;
    if edit.done(&before) {
        return Ok(text.to_owned());
    }
    let expected = edit
        .expected(&before)
        .map_err(|source| ConfigEditError::Refused {
            change: edit.change(),
            source,
        })?;
    let edited = edit
        .edit_text(text)
        .map_err(|(line, what)| ConfigEditError::Unsupported {
            file: file.into(),
            line,
            key: edit.key(),
            what,
            edit: edit.instruction(),
        })?;
    let check = |problem: String| ConfigEditError::Check {
        file: file.into(),
        edit: edit.instruction(),
        problem,
    };
    let after = Loaded::parse(file, &edited, dir).map_err(|e| check(format!("the result: {e}")))?;
    if after.config != expected.config {
        return Err(check("the result is not the configuration intended".into()));
    }
    Ok(edited)
}

/// One line of the text: its content without the line break, and where it starts and ends
/// (after the break) in the text.
struct Line<'a> {
    content: &'a str,
    start: usize,
    end: usize,
    terminated: bool,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        let terminated = raw.ends_with('\n');
        let content = raw.strip_suffix('\n').unwrap_or(raw);
        let content = content.strip_suffix('\r').unwrap_or(content);
        out.push(Line {
            content,
            start,
            end: start + raw.len(),
            terminated,
        });
        start += raw.len();
    }
    out
}

/// The textual edit of `removedNodes` (see the module documentation); on a form it does
/// not rewrite, the 1-based line of the entry and what the form is.
fn edit_removed_nodes(text: &str, name: &NodeName) -> Result<String, (usize, &'static str)> {
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let lines = lines(text);
    let Some((k, after_colon)) = lines
        .iter()
        .enumerate()
        .find_map(|(k, l)| top_level_key(l.content, "removedNodes").map(|v| (k, v)))
    else {
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            nl
        };
        return Ok(format!(
            "{text}{sep}{REMOVED_NODES_COMMENT}{nl}removedNodes: [{name}]{nl}"
        ));
    };
    let key = &lines[k];
    let rest = &key.content[after_colon..];
    let value = rest[..comment_start(rest)].trim_end();
    let value_at = value.len() - value.trim_start().len();
    let value = value.trim_start();
    // Byte offset in `text` of `value`, and an insertion or replacement there.
    let at = key.start + after_colon + value_at;
    let splice =
        |from: usize, to: usize, with: &str| format!("{}{with}{}", &text[..from], &text[to..]);
    if value.is_empty() {
        return match block_items(&lines[k + 1..]) {
            Err(j) => Err((k + 1 + j + 1, "has an item over several lines")),
            Ok(None) => Ok(splice(
                key.start + after_colon,
                key.start + after_colon,
                &format!(" [{name}]"),
            )),
            Ok(Some((j, indent))) => {
                let last = &lines[k + 1 + j];
                let item = format!("{}- {name}", " ".repeat(indent));
                Ok(if last.terminated {
                    splice(last.end, last.end, &format!("{item}{nl}"))
                } else {
                    splice(last.end, last.end, &format!("{nl}{item}"))
                })
            }
        };
    }
    if !value.starts_with('[') {
        return Err((k + 1, "is not a plain block list or one-line flow list"));
    }
    let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) else {
        return Err((k + 1, "is a flow list over several lines"));
    };
    if inner.contains(['[', ']', '{', '}']) {
        return Err((k + 1, "is not a plain list of names"));
    }
    let inner_at = at + 1;
    let kept = inner.trim_end();
    Ok(if kept.trim_start().is_empty() {
        splice(inner_at, inner_at + inner.len(), name)
    } else if kept.ends_with(',') {
        splice(
            inner_at + kept.len(),
            inner_at + kept.len(),
            &format!(" {name}"),
        )
    } else {
        splice(
            inner_at + kept.len(),
            inner_at + kept.len(),
            &format!(", {name}"),
        )
    })
}

/// The textual edit of a pool's count (see the module documentation).
fn edit_pool_count(text: &str, pool: &str, count: u32) -> Result<String, (usize, &'static str)> {
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let lines = lines(text);
    let Some(k) = lines
        .iter()
        .position(|l| top_level_key(l.content, "pools").is_some())
    else {
        let default = crate::config::Pool::default();
        let roles: Vec<&str> = default.roles.iter().map(|r| r.as_str()).collect();
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            nl
        };
        return Ok(format!(
            "{text}{sep}{POOLS_COMMENT}{nl}pools:{nl}  - name: {}{nl}    count: {count}{nl}    roles: [{}]{nl}    memoryMiB: {}{nl}    cpus: {}{nl}",
            default.name,
            roles.join(", "),
            default.memory_mib.unwrap_or_default(),
            default.cpus.unwrap_or_default(),
        ));
    };
    let parsed = Loaded::parse("pangaea.yaml", text, Path::new("."))
        .map_err(|_| (k + 1, "does not load"))?;
    let index = parsed
        .config
        .pools
        .iter()
        .position(|p| p.name == pool)
        .ok_or((k + 1, "has no such pool"))?
        .to_string();
    let splice =
        |from: usize, to: usize, with: &str| format!("{}{with}{}", &text[..from], &text[to..]);
    if let Some((line, col)) = locate_exact(text, &["pools", &index, "count"]) {
        let l = &lines[line - 1];
        let after_key = col - 1 + "count:".len();
        let rest = &l.content[after_key..];
        let value = rest[..comment_start(rest)].trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err((line, "has a count that is not a plain number"));
        }
        let at = l.start + after_key + rest.find(value).expect("found in rest");
        return Ok(splice(at, at + value.len(), &count.to_string()));
    }
    let Some((line, col)) = locate_exact(text, &["pools", &index, "name"]) else {
        return Err((k + 1, "is not a block list of pools"));
    };
    let l = &lines[line - 1];
    let item = format!("{}count: {count}", " ".repeat(col - 1));
    Ok(if l.terminated {
        splice(l.end, l.end, &format!("{item}{nl}"))
    } else {
        splice(l.end, l.end, &format!("{nl}{item}"))
    })
}

/// When `line` is the top-level key `key` (at column 0, possibly quoted), the byte offset
/// just after its `:`.
fn top_level_key(line: &str, key: &str) -> Option<usize> {
    let after_key = [key.to_owned(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .find_map(|k| line.strip_prefix(k.as_str()))?;
    let colon = after_key.trim_start_matches([' ', '\t']);
    let value = colon.strip_prefix(':')?;
    (value.is_empty() || value.starts_with([' ', '\t'])).then(|| line.len() - value.len())
}

/// Where a YAML comment starts in `s` (a `#` at the start or after a blank, outside
/// quotes), else `s.len()`.
fn comment_start(s: &str) -> usize {
    let (mut single, mut double, mut prev_blank) = (false, false, true);
    for (i, c) in s.char_indices() {
        match c {
            '#' if prev_blank && !single && !double => return i,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            _ => {}
        }
        prev_blank = c == ' ' || c == '\t';
    }
    s.len()
}

/// The block list items right after a `removedNodes:` line: `Ok(Some((index of the last
/// item's line, its indentation)))`, `Ok(None)` when there are none, `Err(index)` of a
/// line that continues an item (an item this editor does not rewrite).
fn block_items(lines: &[Line]) -> Result<Option<(usize, usize)>, usize> {
    let mut last: Option<(usize, usize)> = None;
    for (j, l) in lines.iter().enumerate() {
        let body = l.content.trim_start_matches(' ');
        let indent = l.content.len() - body.len();
        let body = body.trim_end();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let is_item = body == "-" || body.starts_with("- ");
        match last {
            None if is_item => last = Some((j, indent)),
            Some((_, i)) if indent == i && is_item => last = Some((j, i)),
            Some((_, i)) if indent > i => return Err(j),
            _ => break,
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClusterModel;

    const COMMENT: &str = REMOVED_NODES_COMMENT;

    fn add(text: &str) -> String {
        add_removed_node(text, "node-3").unwrap_or_else(|e| panic!("{e}"))
    }

    fn names(text: &str) -> Vec<String> {
        let l = Loaded::parse("pangaea.yaml", text, Path::new(".")).unwrap();
        ClusterModel::build(&l)
            .nodes
            .iter()
            .map(|n| n.name.to_string())
            .collect()
    }

    #[test]
    fn the_artifact_source_is_appended_or_replaced_in_place() {
        let set = |t: &str| {
            set_artifact_source(t, ArtifactSource::OsPackages).unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(set(""), "artifactSource: os-packages\n");
        assert_eq!(
            set("name: demo"),
            "name: demo\nartifactSource: os-packages\n"
        );
        assert_eq!(
            set("name: demo\r\n"),
            "name: demo\r\nartifactSource: os-packages\r\n"
        );
        assert_eq!(
            set("artifactSource:   pinned   # the default\nname: demo\n"),
            "artifactSource:   os-packages   # the default\nname: demo\n"
        );
        // Already so: the text as it was, comments and all.
        let same = "artifactSource: os-packages  # offline\n";
        assert_eq!(set(same), same);
        // A file that does not load as it is is refused, not edited.
        for bad in [
            "name: [",
            "artifactSource: # unset\n",
            "artifactSource: mirror\n",
        ] {
            assert!(
                set_artifact_source(bad, ArtifactSource::OsPackages).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn without_the_key_a_commented_line_is_appended() {
        let text = "# My cluster.\nname: demo\n\npools:\n  - name: node\n    count: 4 # four\n";
        assert_eq!(
            add(text),
            format!("{text}{COMMENT}\nremovedNodes: [node-3]\n")
        );
        // No final line break: one is added before the new lines.
        assert_eq!(
            add("name: demo"),
            format!("name: demo\n{COMMENT}\nremovedNodes: [node-3]\n")
        );
        // CRLF files get CRLF lines.
        assert_eq!(
            add("name: demo\r\n"),
            format!("name: demo\r\n{COMMENT}\r\nremovedNodes: [node-3]\r\n")
        );
    }

    #[test]
    fn an_empty_configuration_gets_only_the_removed_nodes_line() {
        let edited = add("");
        assert_eq!(edited, format!("{COMMENT}\nremovedNodes: [node-3]\n"));
        // Still the built-in default pools, less the node.
        assert_eq!(names(""), ["node-1", "node-2", "node-3"]);
        assert_eq!(names(&edited), ["node-1", "node-2"]);
    }

    #[test]
    fn a_one_line_flow_list_gets_the_name_and_keeps_its_comment() {
        let text = "name: demo  # mine\nremovedNodes: [node-2]   # by hand, 2024\npools:\n  - name: node\n    count: 4 # four\n";
        assert_eq!(
            add(text),
            "name: demo  # mine\nremovedNodes: [node-2, node-3]   # by hand, 2024\npools:\n  - name: node\n    count: 4 # four\n"
        );
        assert_eq!(
            add("removedNodes: [ node-1 ]\n"),
            "removedNodes: [ node-1, node-3 ]\n"
        );
        assert_eq!(
            add("removedNodes: [node-1,]\n"),
            "removedNodes: [node-1, node-3]\n"
        );
        assert_eq!(add("removedNodes: []\n"), "removedNodes: [node-3]\n");
        assert_eq!(
            add("removedNodes: [ ] # none\n"),
            "removedNodes: [node-3] # none\n"
        );
        assert_eq!(
            add("\"removedNodes\" : []\n"),
            "\"removedNodes\" : [node-3]\n"
        );
    }

    #[test]
    fn a_block_list_gets_an_item_indented_like_the_last() {
        let text = "name: demo\nremovedNodes:   # by hand\n    - node-1  # broken disk\n\n    # node-2 next?\n    - node-2\n# The pools.\npools:\n  - name: node\n    count: 4\n";
        assert_eq!(
            add(text),
            "name: demo\nremovedNodes:   # by hand\n    - node-1  # broken disk\n\n    # node-2 next?\n    - node-2\n    - node-3\n# The pools.\npools:\n  - name: node\n    count: 4\n"
        );
        // Items at the key's own indentation, and a file without a final line break.
        let text = "pools:\n  - name: node\n    count: 4\nremovedNodes:\n- node-1";
        assert_eq!(add(text), format!("{text}\n- node-3"));
        // CRLF.
        assert_eq!(
            add("removedNodes:\r\n  - node-1\r\nname: demo\r\n"),
            "removedNodes:\r\n  - node-1\r\n  - node-3\r\nname: demo\r\n"
        );
    }

    #[test]
    fn an_empty_key_becomes_a_flow_list() {
        assert_eq!(
            add("removedNodes:   # none yet\nname: demo\n"),
            "removedNodes: [node-3]   # none yet\nname: demo\n"
        );
        assert_eq!(add("removedNodes:\n"), "removedNodes: [node-3]\n");
    }

    #[test]
    fn a_listed_name_leaves_the_text_as_it_is() {
        for text in [
            "removedNodes: [node-3]  # x\n",
            "removedNodes: ['node-3']\n",
            "removedNodes:\n  - node-1\n  - \"node-3\"\n",
        ] {
            assert_eq!(add(text), text);
        }
        for text in [
            "",
            "removedNodes: [node-1]\n",
            "removedNodes:\n  - node-1\n",
        ] {
            let once = add(text);
            assert_eq!(add(&once), once);
        }
    }

    #[test]
    fn other_forms_are_refused_with_what_to_do() {
        let text = "pools:\n  - name: node\n    count: 4\nremovedNodes: &gone [node-2]\n";
        let e = add_removed_node(text, "node-3").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml:4: removedNodes is not a plain block list or one-line flow list, which pangaea-ctl does not rewrite; edit pangaea.yaml by hand: add node-3 to removedNodes"
        );
        // Not a list at all: the configuration does not load.
        let e = add_removed_node("removedNodes: node-2\n", "node-3").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml:1:15: removedNodes: invalid type: string \"node-2\", expected a sequence; edit pangaea.yaml by hand: fix that, and add node-3 to removedNodes"
        );
        let e = add_removed_node(
            "pools: [{name: node, count: 4}]\nremovedNodes: [node-1,\n  node-2]\n",
            "node-3",
        )
        .unwrap_err();
        assert!(
            matches!(e, ConfigEditError::Unsupported { line: 2, .. }),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("edit pangaea.yaml by hand: add node-3 to removedNodes"),
            "{e}"
        );
        let e = add_removed_node("removedNodes:\n  -\n    node-1\n", "node-3").unwrap_err();
        assert!(
            matches!(e, ConfigEditError::Unsupported { line: 3, .. }),
            "{e}"
        );
    }

    #[test]
    fn an_edit_that_does_not_load_as_intended_is_refused() {
        // A flow-style document has no removedNodes line to find; the appended one would be
        // a second key (or break the document).
        for text in ["{name: demo, removedNodes: [node-1]}\n", "{name: demo}\n"] {
            let e = add_removed_node(text, "node-3").unwrap_err();
            assert!(matches!(e, ConfigEditError::Check { .. }), "{e}");
            assert!(
                e.to_string()
                    .ends_with("edit pangaea.yaml by hand: add node-3 to removedNodes"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_edit_that_loads_as_another_configuration_is_refused() {
        // A line that looks like the key but is inside a quoted string: the edit would
        // change the string, not removedNodes.
        let text = "templatesDir: \"t\nremovedNodes: [node-1]\n  x\"\n";
        let e = add_removed_node(text, "node-3").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml: the edit in place (add node-3 to removedNodes) went wrong (the result is not the configuration intended); the file is unchanged: edit pangaea.yaml by hand: add node-3 to removedNodes"
        );
    }

    #[test]
    fn removals_the_configuration_refuses_are_refused() {
        let e = add_removed_node("", "node-9").unwrap_err();
        assert!(matches!(e, ConfigEditError::Refused { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("node-9 is not a node of any pool (pools make node-1..node-3)"),
            "{e}"
        );
        let text = "pools:\n  - name: cp\n    count: 1\n    roles: [etcd, control-plane]\n  - name: w\n    count: 2\n    roles: [worker]\n";
        let e = add_removed_node(text, "cp-1").unwrap_err();
        assert!(
            e.to_string().contains("every node with the etcd role"),
            "{e}"
        );
        let e = add_removed_node("", "Node_3").unwrap_err();
        assert!(matches!(e, ConfigEditError::InvalidName { .. }), "{e}");
        let e = add_removed_node("pools: 3\n", "node-3").unwrap_err();
        assert!(matches!(e, ConfigEditError::Invalid { .. }), "{e}");
        assert!(e.to_string().starts_with("pangaea.yaml:1:"), "{e}");
    }

    #[test]
    fn round_trip_leaves_the_node_out_and_the_others_in_place() {
        let text = "name: demo\npools:\n  - name: node\n    count: 4\n";
        let l = Loaded::parse("pangaea.yaml", text, Path::new(".")).unwrap();
        let before = ClusterModel::build(&l);
        let edited = add(text);
        let l = Loaded::parse("pangaea.yaml", &edited, Path::new(".")).unwrap();
        let after = ClusterModel::build(&l);
        assert!(after.node("node-3").is_none());
        assert_eq!(after.nodes.len(), 3);
        for n in &after.nodes {
            assert_eq!(before.node(&n.name).unwrap().address, n.address);
        }
    }

    fn grow(text: &str, count: u32) -> String {
        set_pool_count(text, "node", count).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_pool_count_is_replaced_in_place() {
        let text = "name: demo # mine\npools:\n  - name: cp\n    count: 1\n    roles: [etcd, control-plane]\n  - name: node   # workers\n    roles: [worker]\n    count:   3  # three\n";
        assert_eq!(
            grow(text, 5),
            "name: demo # mine\npools:\n  - name: cp\n    count: 1\n    roles: [etcd, control-plane]\n  - name: node   # workers\n    roles: [worker]\n    count:   5  # three\n"
        );
        assert_eq!(names(&grow(text, 5)).len(), 6);
        // The count it has already: nothing changes.
        assert_eq!(grow(text, 3), text);
    }

    #[test]
    fn a_pool_without_count_gets_a_count_line() {
        let text = "pools:\n  - name: node\n    roles: [etcd, control-plane, worker]\n";
        assert_eq!(
            grow(text, 4),
            "pools:\n  - name: node\n    count: 4\n    roles: [etcd, control-plane, worker]\n"
        );
        assert_eq!(
            grow("pools:\r\n  - name: node", 5),
            "pools:\r\n  - name: node\r\n    count: 5"
        );
    }

    #[test]
    fn the_default_pool_is_written_out_with_the_new_count() {
        let edited = grow("name: demo\n", 5);
        assert!(
            edited.starts_with("name: demo\n# The default pool"),
            "{edited}"
        );
        assert_eq!(
            names(&edited),
            ["node-1", "node-2", "node-3", "node-4", "node-5"]
        );
        // The same nodes as before for the first three: nothing but the count changed.
        let before = ClusterModel::build(&Loaded::parse("p", "", Path::new(".")).unwrap());
        let after = ClusterModel::build(&Loaded::parse("p", &edited, Path::new(".")).unwrap());
        for n in &before.nodes {
            let a = after.node(&n.name).unwrap();
            assert_eq!(
                (a.address, &a.roles, a.memory_mib, a.cpus),
                (n.address, &n.roles, n.memory_mib, n.cpus)
            );
        }
    }

    #[test]
    fn pool_edits_it_cannot_make_are_refused() {
        let e = set_pool_count("", "big", 4).unwrap_err();
        assert!(matches!(e, ConfigEditError::Refused { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("there is no pool \"big\" (pools: node)"),
            "{e}"
        );
        let e = set_pool_count("pools: [{name: node, count: 3}]\n", "node", 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml:1: pools is not a block list of pools, which pangaea-ctl does not rewrite; edit pangaea.yaml by hand: set count: 4 in pool node"
        );
        let e = set_pool_count("pools:\n  - name: node\n    count: &n 3\n", "node", 4).unwrap_err();
        assert!(
            matches!(e, ConfigEditError::Unsupported { line: 3, .. }),
            "{e}"
        );
        // More nodes than the address range has: validation refuses.
        let e = set_pool_count("network: { nodes: 10.0.0.0/28 }\n", "node", 9).unwrap_err();
        assert!(matches!(e, ConfigEditError::Refused { .. }), "{e}");
    }

    #[test]
    fn the_file_is_replaced_with_its_mode_or_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pangaea.yaml");
        write_removed_node(&path, "node-3").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{COMMENT}\nremovedNodes: [node-3]\n")
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o644);

        std::fs::write(&path, "name: demo # mine\nremovedNodes: [node-3]\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_removed_node(&path, "node-2").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "name: demo # mine\nremovedNodes: [node-3, node-2]\n"
        );
        assert_eq!(mode(&path), 0o600);

        // Through a symlink: the target is edited, the link stays.
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = write_removed_node(&link, "node-1").unwrap_err();
        assert!(
            e.to_string().contains("every node with the etcd role"),
            "{e}"
        );
        std::fs::write(&path, "pools:\n  - name: node\n    count: 5\n").unwrap();
        write_removed_node(&link, "node-5").unwrap();
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("removedNodes: [node-5]\n")
        );

        // A file that does not load is not touched.
        std::fs::write(&path, "pools: 3\n").unwrap();
        assert!(write_removed_node(&path, "node-1").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pools: 3\n");
    }
}
