//! Blocking work off the agent's runtime.
//!
//! The agent runs a single-threaded runtime (one thread keeps it small). Anything that can
//! block that thread — reading and fsyncing files, renames, `/proc` and `statvfs` for the
//! health report, user lookups — runs on tokio's blocking pool instead, so that the
//! assignment stream, reports and unit operations keep going meanwhile. The pool starts
//! threads only when work arrives and lets them go after a few idle seconds.

/// Runs `f` on tokio's blocking pool and waits for it. A panic in `f` resumes here, as if
/// `f` had been called directly.
pub(crate) async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task did not run: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// The closure waits for a value that only the runtime thread sends: run inline, it
    /// would deadlock the (single-threaded) test runtime.
    #[tokio::test]
    async fn the_runtime_thread_stays_free_while_work_blocks() {
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = super::run(move || rx.recv().expect("sender alive"));
        let sending = async {
            tokio::task::yield_now().await;
            tx.send(7).expect("receiver alive");
        };
        let (got, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(waiting, sending)
        })
        .await
        .expect("blocking work ran off the runtime thread");
        assert_eq!(got, 7);
    }

    #[tokio::test]
    #[should_panic(expected = "disk on fire")]
    async fn a_panic_resumes_in_the_caller() {
        super::run(|| panic!("disk on fire")).await
    }
}
