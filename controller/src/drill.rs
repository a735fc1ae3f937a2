//! `pangaea-ctl drill node-loss [NODE]`: proves the HA claim on demand. While a writer
//! keeps writing to etcd through the surviving members (a write every 50 ms, each allowed
//! 300 ms, failing over to the next survivor), one node — the etcd leader unless named, the
//! worst case since its loss needs an election — is crashed the way a power cut would
//! crash it. The drill measures the longest time between two acknowledged writes around the
//! crash (what a client sees), boots the node again and waits until it is healthy.

use crate::membership::Etcd;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// etcd's election timeout (its default; the compiled unit does not change it).
pub const ETCD_ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

/// Where the drill's writes go (deleted afterwards).
const PREFIX: &str = "/pangaea-drill/";
const INTERVAL: Duration = Duration::from_millis(50);
const WRITE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long writes may stay unavailable before the drill gives up waiting.
const GIVE_UP: Duration = Duration::from_secs(30);

/// What a drill measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The node crashed.
    pub node: String,
    /// Whether it was the etcd leader.
    pub was_leader: bool,
    /// The longest time between two acknowledged writes around the crash, ms.
    pub write_unavailable_ms: u64,
    /// etcd's election timeout plus one second, ms: the target.
    pub target_ms: u64,
    /// Writes acknowledged.
    pub writes_ok: u64,
    /// Write attempts that failed (then retried on another member).
    pub writes_failed: u64,
    /// From the crash to the node reporting healthy again, ms (none if it did not).
    pub back_healthy_ms: Option<u64>,
}

/// Acknowledged writes (times since the writer started) and failed attempts.
#[derive(Default)]
struct Log {
    ok: Vec<Duration>,
    failed: u64,
}

/// Writes through `endpoints` until `stop` is set; publishes the time of each acknowledged
/// write on `acked` and returns the whole log.
async fn write_loop(
    etcd: Etcd,
    endpoints: Vec<String>,
    started: Instant,
    acked: tokio::sync::watch::Sender<Option<Duration>>,
    stop: Arc<AtomicBool>,
) -> Log {
    let mut log = Log::default();
    let mut at = 0usize;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let ep = &endpoints[at % endpoints.len()];
        n += 1;
        match etcd
            .put(ep, &format!("{PREFIX}{n}"), "1", WRITE_TIMEOUT)
            .await
        {
            Ok(()) => {
                let t = started.elapsed();
                log.ok.push(t);
                acked.send_replace(Some(t));
            }
            Err(_) => {
                log.failed += 1;
                at += 1;
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
    log
}

/// The longest gap between consecutive acknowledged writes that spans `crash`, or from the
/// last write before it to `now` if none came after.
fn gap_around(ok: &[Duration], crash: Duration, now: Duration) -> Duration {
    let before = ok.iter().rev().find(|t| **t <= crash).copied();
    let after = ok.iter().find(|t| **t > crash).copied();
    match (before, after) {
        (Some(b), Some(a)) => a - b,
        (Some(b), None) => now - b,
        (None, Some(a)) => a - crash,
        (None, None) => now - crash,
    }
}

/// The node a drill crashes.
pub struct Target {
    /// Its name.
    pub node: String,
    /// Whether it is the etcd leader.
    pub was_leader: bool,
    /// The other members' client URLs, written through during the drill.
    pub survivors: Vec<String>,
}

/// Runs the drill on `target`: `crash` crashes it (returning once it is gone), `back`
/// boots it again and returns once it reports healthy from its new boot (an error if it
/// does not).
pub async fn node_loss<C, B>(
    etcd: &Etcd,
    target: Target,
    crash: C,
    back: B,
    progress: crate::provider::Progress<'_>,
) -> anyhow::Result<Report>
where
    C: std::future::Future<Output = anyhow::Result<()>>,
    B: std::future::Future<Output = anyhow::Result<()>>,
{
    let Target {
        node,
        was_leader,
        survivors,
    } = target;
    anyhow::ensure!(!survivors.is_empty(), "no member would survive the crash");
    let started = Instant::now();
    let (acked, mut last_ack) = tokio::sync::watch::channel(None);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_loop(
        etcd.clone(),
        survivors.clone(),
        started,
        acked,
        stop.clone(),
    ));
    // A second of writes before, to see the cluster serve.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if last_ack.borrow().is_none() {
        stop.store(true, Ordering::Relaxed);
        let _ = writer.await;
        anyhow::bail!("etcd took no write before the crash: the drill needs a healthy cluster");
    }
    progress(&format!("{node}: crashing (power cut)"));
    crash.await?;
    // The node is gone for sure only now: no write can be acknowledged between its death
    // and a new leader, so the last one before this moment came before its death.
    let crash_at = started.elapsed();
    // Until writes are acknowledged again (or the drill gives up), and a second more.
    let _ = tokio::time::timeout(
        GIVE_UP,
        last_ack.wait_for(|t| t.is_some_and(|t| t > crash_at)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let log = writer.await?;
    let gap = gap_around(&log.ok, crash_at, started.elapsed());
    progress(&format!(
        "etcd writes unavailable for {:.2} s; booting {node} again",
        gap.as_secs_f64()
    ));
    let back_healthy = match back.await {
        Ok(()) => Some(started.elapsed() - crash_at),
        Err(e) => {
            progress(&format!("{node}: {e:#}"));
            None
        }
    };
    if let Err(e) = etcd.delete_prefix(&survivors[0], PREFIX).await {
        tracing::warn!("drill: could not delete its keys: {e}");
    }
    Ok(Report {
        node,
        was_leader,
        write_unavailable_ms: gap.as_millis() as u64,
        target_ms: (ETCD_ELECTION_TIMEOUT + Duration::from_secs(1)).as_millis() as u64,
        writes_ok: log.ok.len() as u64,
        writes_failed: log.failed,
        back_healthy_ms: back_healthy.map(|d| d.as_millis() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn the_gap_is_what_a_client_saw_around_the_crash() {
        let d = Duration::from_millis;
        // Writes every 50 ms, none from 1000 to 2300.
        let ok = ms(&[900, 950, 1000, 2300, 2350]);
        assert_eq!(gap_around(&ok, d(1010), d(3000)), d(1300));
        // Never back: up to now.
        assert_eq!(gap_around(&ms(&[900, 1000]), d(1010), d(5000)), d(4000));
        // No write before the crash: from the crash.
        assert_eq!(gap_around(&ms(&[1500]), d(1010), d(5000)), d(490));
    }
}
