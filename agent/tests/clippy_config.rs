//! Clippy reads only the `clippy.toml` nearest to a crate and does not merge files, so the
//! async crates' own files (agent, controller) must repeat every ban of the workspace's.

use std::path::Path;

/// The banned paths of a clippy.toml (`path = "..."` entries).
fn bans(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once("path = \"")?.1.split_once('"'))
        .map(|(path, _)| path.to_owned())
        .collect()
}

#[test]
fn the_async_crates_repeat_the_workspace_bans() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let common = bans(&workspace.join("clippy.toml"));
    assert!(
        common.contains(&"std::env::set_var".to_owned()),
        "{common:?}"
    );
    for krate in ["agent", "controller"] {
        let own = bans(&workspace.join(krate).join("clippy.toml"));
        for ban in &common {
            assert!(
                own.contains(ban),
                "{krate}/clippy.toml lacks the workspace ban of {ban}"
            );
        }
        assert!(
            own.contains(&"std::sync::Mutex".to_owned()),
            "{krate}/clippy.toml: {own:?}"
        );
    }
}
