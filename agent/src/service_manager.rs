//! The system boundary for units: systemd on nodes (through `systemctl`), a recording fake
//! in integration tests. The applier only ever talks to this trait.

use std::collections::BTreeMap;
use tokio::sync::watch;

/// A unit operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("systemctl {args}: {message}")]
pub struct UnitError {
    /// The `systemctl` arguments, e.g. `restart etcd.service`.
    pub args: String,
    /// Why it failed (exit status and stderr).
    pub message: String,
}

/// A unit's state as systemd sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitStatus {
    /// e.g. `etcd.service`.
    pub name: String,
    /// systemd's ActiveState (`active`, `inactive`, `failed`, ...), or `unknown`.
    pub active_state: String,
    /// systemd's SubState (`running`, `dead`, ...), or `unknown`.
    pub sub_state: String,
}

/// What the applier and the health report need from systemd.
#[tonic::async_trait]
pub trait ServiceManager: Send + Sync + 'static {
    /// Reloads unit files (after one changed).
    async fn daemon_reload(&self) -> Result<(), UnitError>;
    /// Enables (when asked) and starts the unit; a running unit is left alone.
    async fn start(&self, unit: &str, enable: bool) -> Result<(), UnitError>;
    /// Restarts the unit (its files changed).
    async fn restart(&self, unit: &str) -> Result<(), UnitError>;
    /// Stops and disables the unit.
    async fn remove(&self, unit: &str) -> Result<(), UnitError>;
    /// The state of each of `units`, in order.
    async fn status(&self, units: &[String]) -> Vec<UnitStatus>;
}

/// systemd through `systemctl`, run with `tokio::process` so the agent never blocks.
pub struct Systemctl;

impl Systemctl {
    async fn run(args: &[&str]) -> Result<String, UnitError> {
        let err = |message: String| UnitError {
            args: args.join(" "),
            message,
        };
        let out = tokio::process::Command::new("systemctl")
            .args(args)
            .output()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[tonic::async_trait]
impl ServiceManager for Systemctl {
    async fn daemon_reload(&self) -> Result<(), UnitError> {
        Self::run(&["daemon-reload"]).await.map(drop)
    }
    async fn start(&self, unit: &str, enable: bool) -> Result<(), UnitError> {
        if enable {
            // --no-reload: the applier reloaded after writing unit files already; enable's
            // own reload would cost a full one per unit.
            Self::run(&["enable", "--now", "--no-reload", unit])
                .await
                .map(drop)
        } else {
            Self::run(&["start", unit]).await.map(drop)
        }
    }
    async fn restart(&self, unit: &str) -> Result<(), UnitError> {
        Self::run(&["restart", unit]).await.map(drop)
    }
    async fn remove(&self, unit: &str) -> Result<(), UnitError> {
        Self::run(&["disable", "--now", unit]).await.map(drop)
    }
    async fn status(&self, units: &[String]) -> Vec<UnitStatus> {
        let mut out = Vec::new();
        for u in units {
            let text = Self::run(&["show", "--property=ActiveState,SubState", u])
                .await
                .unwrap_or_default();
            let prop = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("unknown")
                    .to_owned()
            };
            out.push(UnitStatus {
                name: u.clone(),
                active_state: prop("ActiveState="),
                sub_state: prop("SubState="),
            });
        }
        out
    }
}

/// Records every call; units it "started" report `active/running`. For tests, which can
/// also make a call fail ([`RecordingServiceManager::fail_once`]).
///
/// Its state lives in watch cells: readable from synchronous test code and from async
/// code alike, and never locked across an `.await`.
#[derive(Default)]
pub struct RecordingServiceManager {
    calls: watch::Sender<Vec<String>>,
    running: watch::Sender<BTreeMap<String, bool>>,
    /// Calls (as recorded) that fail the next time they are made, once per entry.
    failing: watch::Sender<Vec<String>>,
}

impl RecordingServiceManager {
    /// Every call so far, in order, e.g. `start etcd.service --enable`, `daemon-reload`.
    /// A call made to fail is recorded too.
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// Makes the next call recorded as `call` (e.g. `restart etcd.service`,
    /// `daemon-reload`) fail, once; calling this twice makes it fail twice. A unit whose
    /// start or restart failed reports `inactive/dead`, as systemd would report it failed.
    pub fn fail_once(&self, call: &str) {
        self.failing.send_modify(|f| f.push(call.to_owned()));
    }

    /// Records `call`; fails it if [`Self::fail_once`] asked for that.
    fn record(&self, call: String) -> Result<(), UnitError> {
        let fail = self
            .failing
            .send_if_modified(|f| match f.iter().position(|c| *c == call) {
                Some(i) => {
                    f.remove(i);
                    true
                }
                None => false,
            });
        self.calls.send_modify(|calls| calls.push(call.clone()));
        if fail {
            return Err(UnitError {
                args: call,
                message: "failed on purpose (RecordingServiceManager::fail_once)".into(),
            });
        }
        Ok(())
    }

    fn set_running(&self, unit: &str, up: bool) {
        self.running.send_modify(|r| {
            r.insert(unit.into(), up);
        });
    }
}

#[tonic::async_trait]
impl ServiceManager for RecordingServiceManager {
    async fn daemon_reload(&self) -> Result<(), UnitError> {
        self.record("daemon-reload".into())
    }
    async fn start(&self, unit: &str, enable: bool) -> Result<(), UnitError> {
        let result = self.record(format!(
            "start {unit}{}",
            if enable { " --enable" } else { "" }
        ));
        self.set_running(unit, result.is_ok());
        result
    }
    async fn restart(&self, unit: &str) -> Result<(), UnitError> {
        let result = self.record(format!("restart {unit}"));
        self.set_running(unit, result.is_ok());
        result
    }
    async fn remove(&self, unit: &str) -> Result<(), UnitError> {
        self.record(format!("remove {unit}"))?;
        self.running.send_modify(|r| {
            r.remove(unit);
        });
        Ok(())
    }
    async fn status(&self, units: &[String]) -> Vec<UnitStatus> {
        let running = self.running.borrow();
        units
            .iter()
            .map(|u| {
                let up = running.get(u).copied().unwrap_or(false);
                UnitStatus {
                    name: u.clone(),
                    active_state: if up { "active" } else { "inactive" }.into(),
                    sub_state: if up { "running" } else { "dead" }.into(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fake_fails_a_call_once_when_asked_and_records_it() {
        let sm = RecordingServiceManager::default();
        sm.fail_once("restart a.service");
        assert!(sm.restart("b.service").await.is_ok());
        let e = sm.restart("a.service").await.unwrap_err();
        assert_eq!(e.args, "restart a.service");
        assert_eq!(
            sm.status(&["a.service".into()]).await[0].active_state,
            "inactive"
        );
        assert!(sm.restart("a.service").await.is_ok());
        assert_eq!(
            sm.calls(),
            [
                "restart b.service",
                "restart a.service",
                "restart a.service"
            ]
        );
        assert_eq!(
            sm.status(&["a.service".into()]).await[0].active_state,
            "active"
        );
    }
}
