//! Editing `pangaea.yaml` in place: `pangaea-ctl node remove` records the node in
//! `removedNodes`, so the file stays the one source of truth and a later `up` does not bring
//! the node back.
//!
//! The file is the operator's: a round trip through serde would drop their comments, blank
//! lines and key order, so the edit is textual and touches only the `removedNodes` entry,
//! in the forms people write by hand:
//!
//! * no `removedNodes` key: a commented `removedNodes: [NAME]` line is appended;
//! * a flow list on one line, `removedNodes: [node-2]  # …`: the name is added in it;
//! * a block list, `removedNodes:` then `  - node-2` lines: a `- NAME` item is added after
//!   the last, indented like it;
//! * an empty `removedNodes:` (null): it becomes `removedNodes: [NAME]`.
//!
//! Anything else is refused with what to do (edit the file by hand). Every edit is checked
//! by loading the result with [`Loaded::parse`]: it must give exactly the configuration
//! before with the name added to `removedNodes`, or the edit is refused and nothing written.

use crate::config::{ConfigError, Loaded};
use pangaea_core::NodeName;
use pangaea_core::fsutil::{FsError, atomic_write};
use pangaea_core::names::InvalidName;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The comment line written above a `removedNodes` line this editor adds.
pub const REMOVED_NODES_COMMENT: &str =
    "# Nodes removed with `pangaea-ctl node remove` (their numbers are not reused).";

/// Permission bits of a `pangaea.yaml` this editor creates.
const NEW_FILE_MODE: u32 = 0o644;

/// Why a node could not be recorded in `removedNodes`; in every case the file is unchanged.
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
    #[error(
        "{source}; edit {} by hand: fix that, and add {name} to removedNodes",
        source.file
    )]
    Invalid {
        /// The node being recorded.
        name: NodeName,
        /// Why the configuration does not load (file, line and column).
        #[source]
        source: ConfigError,
    },
    /// The configuration refuses the removal: the node is not one the pools make, or it is
    /// the last with the etcd or control-plane role.
    #[error("cannot remove {name}: {source}")]
    Refused {
        /// The node being recorded.
        name: NodeName,
        /// What validation says of the configuration with the node removed.
        #[source]
        source: ConfigError,
    },
    /// `removedNodes` is written in a form this editor does not rewrite.
    #[error(
        "{file}:{line}: removedNodes {what}, which pangaea-ctl does not rewrite; edit {file} by hand: add {name} to removedNodes"
    )]
    Unsupported {
        /// The configuration file, as named in errors.
        file: String,
        /// 1-based line of the `removedNodes` entry.
        line: usize,
        /// What the entry is, e.g. `is a flow list over several lines`.
        what: &'static str,
        /// The node being recorded.
        name: NodeName,
    },
    /// The edited text did not load as the configuration with the node added.
    #[error(
        "{file}: adding {name} to removedNodes in place went wrong ({problem}); the file is unchanged: edit {file} by hand: add {name} to removedNodes"
    )]
    Check {
        /// The configuration file, as named in errors.
        file: String,
        /// The node being recorded.
        name: NodeName,
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
    #[error("cannot record {name} in removedNodes: {source}")]
    Write {
        /// The node being recorded.
        name: NodeName,
        /// The step that failed, with its path.
        #[source]
        source: FsError,
    },
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
    edit("pangaea.yaml", Path::new("."), text, &node_name(name)?)
}

/// Adds `name` to `removedNodes` of the configuration at `path` with
/// [`add_removed_node`], replacing the file atomically with its permission bits kept (a
/// symlink's target is the file edited). A missing file is the built-in default
/// configuration: it is created (mode 0644) with only the `removedNodes` line. Nothing is
/// written when the name is already listed. The file is read, then replaced: an edit made
/// by someone else in between is lost, so callers do not run two of these at once.
pub fn write_removed_node(path: &Path, name: &str) -> Result<(), ConfigEditError> {
    let name = node_name(name)?;
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
    let edited = edit(&path.display().to_string(), dir, &text, &name)?;
    if edited == text {
        return Ok(());
    }
    atomic_write(&target, edited.as_bytes(), mode)
        .map_err(|source| ConfigEditError::Write { name, source })
}

fn node_name(name: &str) -> Result<NodeName, ConfigEditError> {
    NodeName::try_from(name).map_err(|source| ConfigEditError::InvalidName {
        name: name.into(),
        source,
    })
}

/// [`add_removed_node`] for the file named `file` in errors, with relative paths under
/// `dir`.
fn edit(file: &str, dir: &Path, text: &str, name: &NodeName) -> Result<String, ConfigEditError> {
    let before = Loaded::parse(file, text, dir).map_err(|source| ConfigEditError::Invalid {
        name: name.clone(),
        source,
    })?;
    if before.config.is_removed(name) {
        return Ok(text.to_owned());
    }
    let expected =
        before
            .with_removed_node(name.clone())
            .map_err(|source| ConfigEditError::Refused {
                name: name.clone(),
                source,
            })?;
    let edited = edit_text(text, name).map_err(|(line, what)| ConfigEditError::Unsupported {
        file: file.into(),
        line,
        what,
        name: name.clone(),
    })?;
    let check = |problem: String| ConfigEditError::Check {
        file: file.into(),
        name: name.clone(),
        problem,
    };
    let after = Loaded::parse(file, &edited, dir).map_err(|e| check(format!("the result: {e}")))?;
    if after.config != expected.config {
        return Err(check(format!(
            "the result is not the configuration with {name} added to removedNodes"
        )));
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

/// The textual edit (see the module documentation); on a form it does not rewrite, the
/// 1-based line of the `removedNodes` entry and what the form is.
fn edit_text(text: &str, name: &NodeName) -> Result<String, (usize, &'static str)> {
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let lines = lines(text);
    let Some((k, after_colon)) = lines
        .iter()
        .enumerate()
        .find_map(|(k, l)| key_value_start(l.content).map(|v| (k, v)))
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

/// When `line` is the top-level `removedNodes` key (at column 0, possibly quoted), the byte
/// offset just after its `:`.
fn key_value_start(line: &str) -> Option<usize> {
    let after_key = ["removedNodes", "\"removedNodes\"", "'removedNodes'"]
        .iter()
        .find_map(|k| line.strip_prefix(k))?;
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
            "pangaea.yaml: adding node-3 to removedNodes in place went wrong (the result is not the configuration with node-3 added to removedNodes); the file is unchanged: edit pangaea.yaml by hand: add node-3 to removedNodes"
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
