//! Fault-injection helper: applies two alternating assignments to `ROOT` forever, so that a
//! test can SIGKILL it at arbitrary points and check that no file is ever torn.
//! Usage: apply-loop ROOT STATE_DIR

use pangaea_agent::apply::Applier;
use pangaea_agent::service_manager::RecordingServiceManager;
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (root, state) = (
        std::path::PathBuf::from(&args[1]),
        std::path::PathBuf::from(&args[2]),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fetcher = Arc::new(pangaea_artifact::Fetcher::new(
            pangaea_artifact::Sources::standard(),
            1,
        ));
        let applier = Applier::new(
            &root,
            &state,
            Arc::new(RecordingServiceManager::default()),
            fetcher,
        );
        let mut revision = applier
            .last_applied()
            .ok()
            .flatten()
            .map_or(0, |a| a.revision);
        loop {
            revision += 1;
            applier
                .apply(&pangaea_tests::crash::assignment(revision), false)
                .await
                .unwrap();
        }
    });
}
