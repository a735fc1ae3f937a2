//! `pangaea-ctl compile`: every file each node gets, rendered from `pangaea.yaml` and the
//! templates into a directory (deterministic: the same input gives byte-identical output),
//! or one template with `-i`; `--watch` re-renders on every change.

use super::{Ctx, print_warnings};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Modification stamps of the configuration and every template override, to notice edits.
fn watch_stamp(
    config: &Path,
    templates: &Path,
) -> Vec<(PathBuf, Option<std::time::SystemTime>, u64)> {
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).ok();
        (
            p.to_owned(),
            m.as_ref().and_then(|m| m.modified().ok()),
            m.map_or(0, |m| m.len()),
        )
    };
    let mut out = vec![stamp(config)];
    let mut stack = vec![templates.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(stamp(&p));
            }
        }
    }
    out.sort();
    out
}

/// `compile`'s arguments.
pub struct Args {
    /// Only this node.
    pub node: Option<String>,
    /// The output directory.
    pub out: PathBuf,
    /// Render one template instead.
    pub template: Option<String>,
    /// Where `-i` writes.
    pub output: Option<PathBuf>,
    /// Re-render on every change.
    pub watch: bool,
}

/// Runs `compile`.
pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let Args {
        node,
        out,
        template,
        output,
        watch,
    } = args;
    let (out, config) = (out.as_path(), ctx.config.as_path());
    let once = |first: bool| -> anyhow::Result<()> {
        let c = ctx.compilation()?;
        if first {
            print_warnings(&c.loaded);
        }
        if let Some(t) = &template {
            let node = node
                .clone()
                .unwrap_or_else(|| c.model.nodes[0].name.to_string());
            let path = Path::new(t);
            let source = if path.is_file() {
                Some(std::fs::read_to_string(path)?)
            } else {
                None
            };
            let text =
                c.with_compiler(|compiler| compiler.render_one(t, source.as_deref(), &node))?;
            match &output {
                Some(o) => {
                    pangaea_core::fsutil::atomic_write(o, text.as_bytes(), 0o644)?;
                    crate::errln!("wrote {}", o.display());
                }
                None => crate::out!("{text}"),
            }
            return Ok(());
        }
        let names: Vec<String> = match &node {
            Some(n) => vec![n.clone()],
            None => c.model.nodes.iter().map(|n| n.name.to_string()).collect(),
        };
        // Render everything first: an error anywhere writes nothing.
        let outputs = names
            .iter()
            .map(|n| c.compile_node(n))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut total, mut changed) = (0, 0);
        for o in &outputs {
            for (path, ch) in crate::compile::write_node(out, o)? {
                total += 1;
                if ch {
                    changed += 1;
                    crate::outln!("written    {}", path.display());
                } else if !watch {
                    crate::outln!("unchanged  {}", path.display());
                }
            }
        }
        if node.is_none()
            && c.loaded.config.provider.kind() == pangaea_compiler::provider::ProviderKind::Vagrant
        {
            // The machines of a Vagrant cluster, as `up` would run them on this host.
            let (driver, why) = crate::provider::vagrant::driver();
            if first {
                crate::errln!("Vagrant: {why}");
            }
            let text = crate::provider::vagrant::vagrantfile(&c, driver)
                .map_err(|e| anyhow::anyhow!(e))?
                .render();
            let path = out.join("Vagrantfile");
            if crate::compile::write_if_changed(&path, text.as_bytes(), 0o644)? {
                changed += 1;
                crate::outln!("written    {}", path.display());
            } else if !watch {
                crate::outln!("unchanged  {}", path.display());
            }
            total += 1;
        }
        crate::errln!(
            "{} node(s), {total} files, {changed} changed, in {}",
            outputs.len(),
            out.display()
        );
        Ok(())
    };
    // Stamp before rendering, so an edit made while rendering is not missed.
    let templates_dir = config.parent().unwrap_or(Path::new(".")).join("templates");
    let mut last = watch_stamp(config, &templates_dir);
    once(true)?;
    if !watch {
        return Ok(());
    }
    crate::errln!(
        "watching {} and {} (Ctrl-C to stop)",
        config.display(),
        templates_dir.display()
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let now = watch_stamp(config, &templates_dir);
        if now != last {
            last = now;
            if let Err(e) = once(false) {
                crate::errln!("error: {e:#}");
            }
        }
    }
}
