//! Finding where a value sits in a YAML document, for errors found after parsing (overlapping
//! CIDRs, an impossible memory budget): `locate(text, &["pools", "1", "memoryMiB"])` gives
//! the 1-based line and column of that key. Works on the block style people write by hand;
//! returns the deepest prefix of the path it could find.

/// The 1-based (line, column) of the key at `path` (keys, and list indices as numbers), or
/// of the deepest prefix of it that is found; `None` when not even the first key is.
pub fn locate(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    // (first line, last line exclusive, minimum indent) of the node being searched.
    let (mut from, mut to, mut min_indent) = (0usize, lines.len(), 0usize);
    for seg in path {
        let mut hit = None;
        if let Ok(index) = seg.parse::<usize>() {
            // The index-th "- " item directly inside the current node.
            let item_indent = (from..to)
                .filter_map(|i| item_at(lines[i], min_indent))
                .next();
            if let Some(ind) = item_indent {
                let items: Vec<usize> = (from..to)
                    .filter(|&i| item_at(lines[i], min_indent) == Some(ind))
                    .collect();
                if let Some(&start) = items.get(index) {
                    let end = items
                        .get(index + 1)
                        .copied()
                        .unwrap_or_else(|| block_end(&lines, start, ind, to));
                    hit = Some((start, end.min(to), ind + 2, ind + 3));
                }
            }
        } else {
            for i in from..to {
                let l = lines[i];
                let ind = indent(l);
                let body = l[ind..].trim_start_matches("- ");
                let ind = l.len() - body.len();
                if ind >= min_indent && (body.starts_with(&format!("{seg}:"))) {
                    let end = block_end(&lines, i, ind, to);
                    hit = Some((i + 1, end, ind + 1, ind + 1));
                    break;
                }
            }
            if let Some((line, end, child_indent, col)) = hit {
                found = Some((line, col));
                from = line;
                to = end;
                min_indent = child_indent;
                continue;
            }
        }
        match hit {
            Some((start, end, child_indent, col)) => {
                found = Some((start + 1, col));
                from = start;
                to = end;
                // The item's keys start at its "- " line, indented past the dash.
                min_indent = child_indent.saturating_sub(2).max(min_indent);
            }
            None => return found,
        }
    }
    found
}

/// Like [`locate`], but only when the last key of `path` itself is found (not a prefix).
pub fn locate_exact(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let last = path.last()?;
    locate(text, path).filter(|(line, _)| {
        text.lines().nth(line - 1).is_some_and(|l| {
            l.trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{last}:"))
        })
    })
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start_matches(' ').len()
}

fn item_at(l: &str, min_indent: usize) -> Option<usize> {
    let ind = indent(l);
    (ind >= min_indent.saturating_sub(2) && l[ind..].starts_with("- ")).then_some(ind)
}

/// Index of the first line after `start` that is indented at most `ind` (and not blank or a
/// comment), bounded by `to`.
fn block_end(lines: &[&str], start: usize, ind: usize, to: usize) -> usize {
    (start + 1..to)
        .find(|&i| {
            let t = lines[i].trim_start();
            !t.is_empty() && !t.starts_with('#') && indent(lines[i]) <= ind
        })
        .unwrap_or(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "apiVersion: x\nnetwork:\n  pods: 10.0.0.0/8\n  services: 10.96.0.0/12\npools:\n  - name: a\n    count: 1\n  - name: b\n    count: 2\n    memoryMiB: 512\n";

    #[test]
    fn finds_nested_keys_and_list_items() {
        assert_eq!(locate(DOC, &["network", "services"]), Some((4, 3)));
        assert_eq!(locate(DOC, &["pools", "1", "memoryMiB"]), Some((10, 5)));
        assert_eq!(locate(DOC, &["pools", "0", "count"]), Some((7, 5)));
        assert_eq!(locate(DOC, &["pools", "1"]), Some((8, 5)));
        assert_eq!(locate(DOC, &["pools", "1", "name"]), Some((8, 5)));
    }

    #[test]
    fn falls_back_to_the_deepest_known_prefix() {
        assert_eq!(locate(DOC, &["network", "nodes"]), Some((2, 1)));
        assert_eq!(locate(DOC, &["nothing"]), None);
    }
}
