//! The configuration reference: `compiler/reference.yaml`, every field of `pangaea.yaml`
//! with its default and an explanation, and examples for the optional ones. `pangaea-ctl
//! init` writes it as a new cluster's `pangaea.yaml`.
//!
//! It is kept true by its tests, against the config types themselves: as it stands it
//! parses to exactly the defaults; with every example uncommented it is a valid
//! configuration; and every field the types serialize is named in it.

/// The reference, as `init` writes it.
pub const REFERENCE: &str = include_str!("../reference.yaml");

/// `text` with its examples uncommented: each `# ` line becomes live, and a live top-level
/// entry that an example of the same key follows is replaced by it.
pub fn with_examples(text: &str) -> String {
    fn top_key(line: &str) -> Option<&str> {
        let key = line.split_once(':')?.0;
        (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric())).then_some(key)
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(key) = top_key(line) {
            let end = i
                + 1
                + lines[i + 1..]
                    .iter()
                    .take_while(|l| l.starts_with(' '))
                    .count();
            let replaced = lines[end..]
                .iter()
                .take_while(|l| top_key(l).is_none())
                .any(|l| l.strip_prefix("# ").and_then(top_key) == Some(key));
            if !replaced {
                out.extend(&lines[i..end]);
            }
            i = end;
            continue;
        }
        if let Some(example) = line.strip_prefix("# ") {
            out.push(example);
        }
        i += 1;
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loaded;
    use std::path::Path;

    fn load(text: &str, dir: &Path) -> Loaded {
        Loaded::parse("reference.yaml", text, dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn as_written_it_is_exactly_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load(REFERENCE, dir.path()).config,
            load("", dir.path()).config
        );
    }

    /// Every key of `v` (objects, recursively; map entries the user names are skipped).
    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    if !["labels", "expose", "members"].contains(&k.as_str()) {
                        keys(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }

    #[test]
    fn its_examples_are_a_valid_configuration_and_name_every_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("registry-key.json"), "{}").unwrap();
        std::fs::write(dir.path().join("app.env"), "A=1\n").unwrap();
        let examples = with_examples(REFERENCE);
        let loaded = load(&examples, dir.path());
        assert_eq!(
            loaded.config.provider.kind(),
            crate::provider::ProviderKind::Gce
        );
        assert!(loaded.config.registry.is_some());
        let mut all = Vec::new();
        keys(&serde_json::to_value(&loaded.config).unwrap(), &mut all);
        for key in all {
            assert!(
                REFERENCE.contains(&format!("{key}:")),
                "field {key} is not in compiler/reference.yaml"
            );
        }
    }

    #[test]
    fn the_documentation_shows_it_verbatim() {
        let doc = include_str!("../../docs/configuration.md");
        assert!(
            doc.contains(&format!("```yaml\n{REFERENCE}```\n")),
            "docs/configuration.md's yaml block differs from compiler/reference.yaml: copy it"
        );
    }

    #[test]
    fn examples_replace_the_entry_they_follow() {
        let text = "a: 1\n# a: 2\nb:\n  c: 3\n#   d: 4\n## prose\n";
        assert_eq!(with_examples(text), "a: 2\nb:\n  c: 3\n  d: 4\n");
    }
}
