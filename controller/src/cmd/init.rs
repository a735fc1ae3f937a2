//! `pangaea-ctl init [DIR]`: a new cluster directory: `pangaea.yaml` (the configuration
//! reference, every field with its default), `templates/` with a README on overriding the
//! built-in templates, and a `.gitignore` that keeps the cluster's keys and state out of
//! version control. Idempotent: what exists is kept (`--force` replaces `pangaea.yaml`).

use anyhow::Context;
use std::path::{Path, PathBuf};

/// What the cluster directory's `.gitignore` must hold, each with why.
const IGNORED: [(&str, &str); 3] = [
    (".pangaea/", "CA keys, bootstrap tokens, the state store"),
    (
        "compiled/",
        "`pangaea-ctl compile` output: node keys and certificates",
    ),
    ("*.kubeconfig", "admin credentials"),
];

/// Runs `init`.
pub fn run(dir: Option<PathBuf>, force: bool) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let config = dir.join("pangaea.yaml");
    if config.exists() && !force {
        crate::outln!(
            "kept      {} (it exists; --force replaces it with the reference)",
            config.display()
        );
    } else {
        write(&config, pangaea_compiler::reference::REFERENCE)?;
        crate::outln!(
            "wrote     {} (every field with its default: the configuration reference)",
            config.display()
        );
    }
    let readme = dir.join("templates").join("README.md");
    if readme.exists() {
        crate::outln!("kept      {}", readme.display());
    } else {
        write(&readme, &templates_readme())?;
        crate::outln!(
            "wrote     {} (how to override a built-in template)",
            readme.display()
        );
    }
    let gitignore = dir.join(".gitignore");
    let existing = std::fs::read_to_string(&gitignore).unwrap_or_default();
    let missing: Vec<_> = IGNORED
        .iter()
        .filter(|(p, _)| !existing.lines().any(|l| l.trim() == *p))
        .collect();
    if missing.is_empty() {
        crate::outln!("kept      {}", gitignore.display());
    } else {
        let mut text = existing.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for (pattern, why) in &missing {
            text.push_str(&format!("# {why}\n{pattern}\n"));
        }
        write(&gitignore, &text)?;
        crate::outln!(
            "{} {} (keeps .pangaea/ out of version control)",
            if existing.is_empty() {
                "wrote    "
            } else {
                "added to "
            },
            gitignore.display()
        );
    }
    crate::outln!(
        "\nnext: edit pangaea.yaml, `pangaea-ctl compile` to check it, `sudo pangaea-ctl up`"
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    pangaea_core::fsutil::atomic_write(path, text.as_bytes(), 0o644)
        .with_context(|| format!("write {}", path.display()))
}

/// The README of a cluster's `templates/` directory, listing the built-in templates.
fn templates_readme() -> String {
    let mut s = String::from(
        "# templates/\n\n\
         Files here override Pangaea's built-in templates of the same name: to change what\n\
         the nodes get, put a file named after a template below, with `.hbs` added (for\n\
         example `units/etcd.service.hbs`). The built-in text of each is in Pangaea's source\n\
         tree under `templates/`; `pangaea-ctl compile -i units/etcd.service` prints one as\n\
         rendered for a node, and `pangaea-ctl compile` renders them all into `compiled/`.\n\n\
         Templates are Handlebars, rendered strictly: an unknown variable or helper is an\n\
         error naming the template and its line. Each sees `cluster`, `nodes`, `node`,\n\
         `paths` and, for some, `params`.\n\n\
         The built-in templates:\n\n",
    );
    for (name, _) in pangaea_compiler::templates::BUILTIN {
        s.push_str(&format!("- `{name}.hbs`\n"));
    }
    s
}
