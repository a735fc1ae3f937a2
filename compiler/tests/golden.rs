//! Golden tests. `golden/succeeds/<case>/<node>/…` holds every file the compiler renders for
//! the configurations in `common::CASES` (with deterministic inputs), plus `artifacts.json`
//! and `units.json`; any difference fails. After an intended change, regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p pangaea-compiler --test golden` and review the diff.
//!
//! `golden/fails/<case>/` holds a configuration (`pangaea.yaml`) and/or template overrides
//! (`templates/…`) that must be refused, and `error.txt`: text the error must contain.

mod common;

use common::{CASES, try_compile};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out
}

#[test]
fn rendered_files_match_the_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cluster_dir = tempfile::tempdir().unwrap();
    let mut mismatches = Vec::new();
    for (case, config) in CASES {
        let dir = golden_dir().join("succeeds").join(case);
        let nodes = try_compile(config, cluster_dir.path(), None).unwrap();
        // One node per distinct role set keeps the golden tree readable.
        let mut seen = BTreeSet::new();
        let mut rendered = std::collections::BTreeMap::new();
        for n in nodes {
            let key: Vec<String> = n.units.iter().map(|u| u.name.clone()).collect();
            if !seen.insert(key) {
                continue;
            }
            for f in &n.files {
                rendered.insert(
                    PathBuf::from(&n.node).join(f.path.trim_start_matches('/')),
                    f.content.clone(),
                );
            }
            rendered.insert(
                PathBuf::from(&n.node).join("artifacts.json"),
                serde_json::to_string_pretty(&n.artifacts).unwrap() + "\n",
            );
            rendered.insert(
                PathBuf::from(&n.node).join("units.json"),
                serde_json::to_string_pretty(&n.units).unwrap() + "\n",
            );
        }
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            for (rel, content) in &rendered {
                let p = dir.join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, content).unwrap();
            }
            continue;
        }
        let on_disk = files_under(&dir);
        for (rel, content) in &rendered {
            match std::fs::read_to_string(dir.join(rel)) {
                Ok(g) if g == *content => {}
                Ok(_) => mismatches.push(format!("{case}/{} differs", rel.display())),
                Err(_) => mismatches.push(format!("{case}/{} has no golden file", rel.display())),
            }
        }
        for rel in on_disk.iter().filter(|r| !rendered.contains_key(*r)) {
            mismatches.push(format!("{case}/{} is no longer rendered", rel.display()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden mismatches (regenerate with UPDATE_GOLDEN=1 after an intended change):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn refused_inputs_give_the_expected_errors() {
    let fails = golden_dir().join("fails");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&fails)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "only {} failure cases", cases.len());
    for case in cases {
        let config = std::fs::read_to_string(case.join("pangaea.yaml")).unwrap_or_default();
        let expected = std::fs::read_to_string(case.join("error.txt")).unwrap();
        let overrides = case.join("templates");
        let err = match try_compile(
            &config,
            &case,
            overrides.is_dir().then_some(overrides.as_path()),
        ) {
            Ok(_) => panic!(
                "{}: compiled, but must fail with {expected:?}",
                case.display()
            ),
            Err(e) => e,
        };
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                err.contains(line.trim()),
                "{}: error {err:?} lacks {line:?}",
                case.display()
            );
        }
    }
}
