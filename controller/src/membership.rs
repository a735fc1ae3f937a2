//! etcd membership changes, made only when they are safe (lifecycle: node remove).
//!
//! The controller speaks to etcd's own JSON gateway (`/v3/cluster/member/*`,
//! `/v3/maintenance/*`) over mutual TLS with the operator's etcd client certificate, so no
//! etcd client library or `etcdctl` is needed. A change acts on a member **ID**, found by
//! the member's **peer URL** (the address it was compiled with), never on its name, and
//! only after [`survey`] has asked every member and [`check_removal`] has proved that the
//! cluster can take it: the survivors that answer agree on the membership, have one
//! leader, no learner is pending, no alarm is raised; the members left keep quorum and are
//! not an even number. The last two refusals give way to `--force`; the others do not
//! (nothing can be removed safely until they clear).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// How long one member may take to answer one question.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one attempt at a membership change may take: etcd answers once the change is
/// committed and applied. A proposal made while the leader is changing (the removed member
/// was the leader) can be lost without an answer; the attempt is then repeated, which is
/// safe since a removal is idempotent.
const CHANGE_ATTEMPT: Duration = Duration::from_secs(5);
/// How long a membership change may take in all.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why etcd could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The client credentials do not load.
    #[error("etcd client credentials: {0}")]
    Credentials(String),
    /// The member did not answer (connection, TLS, timeout).
    #[error("{endpoint}: {message}")]
    Unreachable {
        /// The member's client URL.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The member answered with an error.
    #[error("{endpoint}: etcd says {message}")]
    Refused {
        /// The member's client URL.
        endpoint: String,
        /// etcd's gRPC status code (5: not found; 14: unavailable, try again).
        code: i64,
        /// etcd's message.
        message: String,
    },
}

/// An etcd member as the cluster lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Member {
    /// Its ID.
    #[serde(rename = "ID", with = "u64_string")]
    pub id: u64,
    /// Its name (empty for a member added but not started yet).
    #[serde(default)]
    pub name: String,
    /// Its peer URLs: what identifies it here.
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    /// Its client URLs (empty until it started).
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    /// Still a learner (not voting).
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

/// One member's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The member that answered.
    pub member_id: u64,
    /// The leader it follows (0: none).
    pub leader: u64,
    /// The membership as it sees it.
    pub members: Vec<Member>,
    /// Raised alarms, as `MEMBER-ID: ALARM`.
    pub alarms: Vec<String>,
}

/// etcd's JSON gateway, with the operator's client certificate (cheap to clone).
#[derive(Clone)]
pub struct Etcd {
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Header {
    #[serde(with = "u64_string")]
    member_id: u64,
}

#[derive(Deserialize)]
struct MemberList {
    header: Header,
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default, with = "u64_string")]
    leader: u64,
}

#[derive(Deserialize)]
struct AlarmMember {
    #[serde(rename = "memberID", default, with = "u64_string")]
    member_id: u64,
    #[serde(default)]
    alarm: String,
}

#[derive(Deserialize)]
struct Alarms {
    #[serde(default)]
    alarms: Vec<AlarmMember>,
}

/// What removing a member did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    /// etcd removed it now.
    Now,
    /// It was not a member (already removed, by an earlier run for instance).
    Already,
}

impl Etcd {
    /// A client trusting the etcd CA `ca_pem`, presenting `cert_pem`/`key_pem`.
    pub fn new(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Etcd, EtcdError> {
        pangaea_core::install_crypto_provider();
        let bad = |e: reqwest::Error| EtcdError::Credentials(e.to_string());
        let ca = reqwest::Certificate::from_pem(ca_pem).map_err(bad)?;
        let identity =
            reqwest::Identity::from_pem(&[cert_pem, b"\n", key_pem].concat()).map_err(bad)?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .identity(identity)
            .connect_timeout(ANSWER_TIMEOUT)
            .build()
            .map_err(bad)?;
        Ok(Etcd { http })
    }

    async fn post<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        path: &str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> Result<T, EtcdError> {
        let unreachable = |message: String| EtcdError::Unreachable {
            endpoint: endpoint.to_owned(),
            message,
        };
        let resp = self
            .http
            .post(format!("{endpoint}/v3/{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| unreachable(pangaea_core::error_chain(&e)))?;
        let text = resp
            .text()
            .await
            .map_err(|e| unreachable(pangaea_core::error_chain(&e)))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| unreachable(format!("not etcd's JSON ({e}): {text:.200}")))?;
        if let Some(message) = value.get("error").and_then(|m| m.as_str()) {
            return Err(EtcdError::Refused {
                endpoint: endpoint.to_owned(),
                code: value.get("code").and_then(|c| c.as_i64()).unwrap_or(0),
                message: message.to_owned(),
            });
        }
        serde_json::from_value(value)
            .map_err(|e| unreachable(format!("unexpected answer ({e}): {text:.200}")))
    }

    /// What the member at `endpoint` (a client URL) sees: membership, leader, alarms.
    pub async fn view(&self, endpoint: &str) -> Result<View, EtcdError> {
        let list: MemberList = self
            .post(
                endpoint,
                "cluster/member/list",
                serde_json::json!({}),
                ANSWER_TIMEOUT,
            )
            .await?;
        let status: Status = self
            .post(
                endpoint,
                "maintenance/status",
                serde_json::json!({}),
                ANSWER_TIMEOUT,
            )
            .await?;
        let alarms: Alarms = self
            .post(
                endpoint,
                "maintenance/alarm",
                serde_json::json!({}),
                ANSWER_TIMEOUT,
            )
            .await?;
        Ok(View {
            member_id: list.header.member_id,
            leader: status.leader,
            members: list.members,
            alarms: alarms
                .alarms
                .iter()
                .map(|a| format!("{:x}: {}", a.member_id, a.alarm))
                .collect(),
        })
    }

    /// Makes membership change `path` (`cluster/member/…`) with `body`, asking the member
    /// at `endpoint`. etcd refuses a change while its members have been connected for less
    /// than 5 s ("unhealthy cluster", right after a restart), and may leave an attempt
    /// unanswered while its leader changes: both are retried for up to
    /// [`CHANGE_TIMEOUT`]. Every other refusal is returned at once.
    async fn change<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, EtcdError> {
        let started = std::time::Instant::now();
        loop {
            let r = self
                .post(endpoint, path, body.clone(), CHANGE_ATTEMPT)
                .await;
            match r {
                Err(EtcdError::Refused {
                    code: UNAVAILABLE,
                    message,
                    ..
                })
                | Err(EtcdError::Unreachable { message, .. })
                    if started.elapsed() < CHANGE_TIMEOUT =>
                {
                    tracing::info!(%message, "etcd did not take the membership change yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                r => return r,
            }
        }
    }

    /// Removes member `id`, asking the member at `endpoint` (retried as [`Etcd::change`]
    /// says).
    pub async fn remove(&self, endpoint: &str, id: u64) -> Result<Removed, EtcdError> {
        let r: Result<serde_json::Value, _> = self
            .change(
                endpoint,
                "cluster/member/remove",
                serde_json::json!({ "ID": id.to_string() }),
            )
            .await;
        match r {
            Ok(_) => Ok(Removed::Now),
            Err(EtcdError::Refused {
                code: NOT_FOUND, ..
            }) => Ok(Removed::Already),
            Err(e) => Err(e),
        }
    }

    /// Adds a learner with peer URL `peer_url`, asking the member at `endpoint`; returns its
    /// ID and the membership with it. A member with that peer URL already there (an
    /// attempt that was applied but not answered) is taken as the answer.
    pub async fn add_learner(
        &self,
        endpoint: &str,
        peer_url: &str,
    ) -> Result<(u64, Vec<Member>), EtcdError> {
        #[derive(Deserialize)]
        struct Added {
            member: Member,
            #[serde(default)]
            members: Vec<Member>,
        }
        let r: Result<Added, _> = self
            .change(
                endpoint,
                "cluster/member/add",
                serde_json::json!({ "peerURLs": [peer_url], "isLearner": true }),
            )
            .await;
        match r {
            Ok(a) => Ok((a.member.id, a.members)),
            Err(EtcdError::Refused { ref message, .. })
                if MEMBER_EXISTS.iter().any(|m| message.contains(m)) =>
            {
                let view = self.view(endpoint).await?;
                let id = view
                    .members
                    .iter()
                    .find(|m| m.peer_urls.iter().any(|u| u == peer_url))
                    .map(|m| m.id)
                    .ok_or_else(|| r.err().expect("an error"))?;
                Ok((id, view.members))
            }
            Err(e) => Err(e),
        }
    }

    /// Promotes learner `id` to a voting member, asking the member at `endpoint`. etcd
    /// promotes only a learner that has caught up with the leader: until then this is
    /// [`Promoted::NotCaughtUp`], and the caller asks again.
    pub async fn promote(&self, endpoint: &str, id: u64) -> Result<Promoted, EtcdError> {
        let r: Result<serde_json::Value, _> = self
            .change(
                endpoint,
                "cluster/member/promote",
                serde_json::json!({ "ID": id.to_string() }),
            )
            .await;
        match r {
            Ok(_) => Ok(Promoted::Now),
            Err(EtcdError::Refused { ref message, .. }) if message.contains(LEARNER_NOT_READY) => {
                Ok(Promoted::NotCaughtUp)
            }
            Err(EtcdError::Refused { ref message, .. }) if message.contains(NOT_A_LEARNER) => {
                Ok(Promoted::Already)
            }
            Err(e) => Err(e),
        }
    }
}

/// etcd's gRPC status codes that a membership change acts on.
const NOT_FOUND: i64 = 5;
const UNAVAILABLE: i64 = 14;
/// etcd's messages (`etcdserver/errors.go`) that tell a membership change's outcome; all
/// come with code 9 (failed precondition), so the message is what tells them apart. A
/// member added again with the same peer URL gets the same ID, and etcd answers with
/// either of the first two.
const MEMBER_EXISTS: [&str; 2] = ["Peer URLs already exists", "member ID already exist"];
const LEARNER_NOT_READY: &str = "can only promote a learner member which is in sync with leader";
const NOT_A_LEARNER: &str = "can only promote a learner member";

/// What promoting a learner did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promoted {
    /// etcd promoted it now.
    Now,
    /// It is a voting member already (an earlier run promoted it).
    Already,
    /// It has not caught up with the leader yet.
    NotCaughtUp,
}

/// A snapshot saved by [`Etcd::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Bytes written (the database, with etcd's 32-byte SHA-256 trailer).
    pub bytes: u64,
    /// The member's revision when asked, just before the snapshot.
    pub revision: i64,
}

/// Checks a snapshot stream as it is written: etcd ends a snapshot with the SHA-256 of
/// everything before it (what `etcdctl snapshot restore` checks), so the last 32 bytes are
/// held back from the hash until the stream ends.
#[derive(Default)]
pub struct SnapshotCheck {
    hasher: sha2::Sha256,
    tail: Vec<u8>,
    bytes: u64,
}

impl SnapshotCheck {
    /// Takes the next piece of the stream.
    pub fn update(&mut self, piece: &[u8]) {
        use sha2::Digest as _;
        self.bytes += piece.len() as u64;
        self.tail.extend_from_slice(piece);
        if self.tail.len() > 32 {
            let cut = self.tail.len() - 32;
            self.hasher.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    /// Whether the stream ended with the hash of what came before; its length.
    pub fn finish(self) -> Result<u64, String> {
        use sha2::Digest as _;
        if self.tail.len() < 32 {
            return Err(format!("{} bytes: too short to be a snapshot", self.bytes));
        }
        let want = self.hasher.finalize();
        if want.as_slice() != self.tail.as_slice() {
            return Err("its SHA-256 trailer does not match its content (torn or altered)".into());
        }
        Ok(self.bytes)
    }
}

impl Etcd {
    /// Writes `value` at `key`, asking the member at `endpoint`, waiting at most `timeout`.
    pub async fn put(
        &self,
        endpoint: &str,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), EtcdError> {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        self.post::<serde_json::Value>(
            endpoint,
            "kv/put",
            serde_json::json!({ "key": b64(key), "value": b64(value) }),
            timeout,
        )
        .await
        .map(drop)
    }

    /// Deletes every key under `prefix`.
    pub async fn delete_prefix(&self, endpoint: &str, prefix: &str) -> Result<(), EtcdError> {
        use base64::Engine as _;
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        // The range end of a prefix: the prefix with its last byte incremented.
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        self.post::<serde_json::Value>(
            endpoint,
            "kv/deleterange",
            serde_json::json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&end) }),
            ANSWER_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Saves a snapshot of the member at `endpoint` to `dest` (0600: etcd's data holds
    /// secrets): streamed to a temporary file beside it, its SHA-256 trailer checked,
    /// fsynced, then renamed into place — a failed or torn snapshot never replaces `dest`.
    pub async fn snapshot(&self, endpoint: &str, dest: &Path) -> Result<Snapshot, EtcdError> {
        use base64::Engine as _;
        use std::io::Write as _;
        #[derive(Deserialize)]
        struct Header {
            #[serde(default, with = "u64_string")]
            revision: u64,
        }
        #[derive(Deserialize)]
        struct StatusHeader {
            header: Header,
        }
        let revision = self
            .post::<StatusHeader>(
                endpoint,
                "maintenance/status",
                serde_json::json!({}),
                ANSWER_TIMEOUT,
            )
            .await?
            .header
            .revision as i64;
        let fail = |message: String| EtcdError::Unreachable {
            endpoint: endpoint.to_owned(),
            message,
        };
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".snapshot.")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| fail(format!("create a file in {}: {e}", dir.display())))?;
        let mut resp = self
            .http
            .post(format!("{endpoint}/v3/maintenance/snapshot"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| fail(pangaea_core::error_chain(&e)))?;
        let mut check = SnapshotCheck::default();
        let mut line = Vec::new();
        let mut take = |line: &[u8], check: &mut SnapshotCheck| -> Result<(), EtcdError> {
            if line.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| fail(format!("not etcd's snapshot stream: {e}")))?;
            if let Some(message) = v.get("error").and_then(|m| m.get("message").or(Some(m))) {
                return Err(EtcdError::Refused {
                    endpoint: endpoint.to_owned(),
                    code: v["error"]["grpc_code"].as_i64().unwrap_or(0),
                    message: message.to_string(),
                });
            }
            let blob = v["result"]["blob"].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(blob)
                .map_err(|e| fail(format!("snapshot piece: {e}")))?;
            check.update(&bytes);
            tmp.write_all(&bytes)
                .map_err(|e| fail(format!("write {}: {e}", tmp.path().display())))
        };
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fail(pangaea_core::error_chain(&e)))?
        {
            for b in chunk {
                if b == b'\n' {
                    take(&line, &mut check)?;
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        take(&line, &mut check)?;
        let bytes = check
            .finish()
            .map_err(|m| fail(format!("snapshot refused: {m}")))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| fail(format!("fsync: {e}")))?;
        tmp.persist(dest)
            .map_err(|e| fail(format!("rename into {}: {}", dest.display(), e.error)))?;
        pangaea_core::fsutil::sync_dir(dir).map_err(|e| fail(e.to_string()))?;
        Ok(Snapshot { bytes, revision })
    }
}

/// What every member asked answered: client URL → its view, or why it did not answer.
#[derive(Debug)]
pub struct Survey {
    /// One answer per endpoint asked, in the order asked.
    pub answers: Vec<(String, Result<View, String>)>,
}

/// Asks every one of `endpoints` (client URLs) at once.
pub async fn survey(etcd: &Etcd, endpoints: &[String]) -> Survey {
    let mut asks = tokio::task::JoinSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let (etcd, e) = (etcd.clone(), e.clone());
        asks.spawn(async move {
            let r = etcd.view(&e).await.map_err(|err| err.to_string());
            (i, e, r)
        });
    }
    let mut answers: Vec<(usize, String, Result<View, String>)> = asks.join_all().await;
    answers.sort_by_key(|(i, _, _)| *i);
    Survey {
        answers: answers.into_iter().map(|(_, e, r)| (e, r)).collect(),
    }
}

/// Whether every member asked answered, all agree on the membership, every listed member
/// answered, and all follow one leader: etcd is whole.
pub fn all_serving(survey: &Survey) -> bool {
    let views: Vec<&View> = survey
        .answers
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let Some(first) = views.first() else {
        return false;
    };
    let ids = |v: &View| v.members.iter().map(|m| m.id).collect::<BTreeSet<u64>>();
    let answered: BTreeSet<u64> = views.iter().map(|v| v.member_id).collect();
    views.len() == survey.answers.len()
        && first.leader != 0
        && views
            .iter()
            .all(|v| v.leader == first.leader && ids(v) == ids(first))
        && ids(first) == answered
}

/// One line on what the survey found, for messages.
pub fn describe(survey: &Survey) -> String {
    survey
        .answers
        .iter()
        .map(|(e, r)| match r {
            Ok(v) => format!("{e}: {} members, leader {:x}", v.members.len(), v.leader),
            Err(m) => format!("{e}: {m}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A removal the cluster can take now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Remove member `id` (named `name`), asking the survivor at `ask`; `warnings` are the
    /// refusals `--force` overrode.
    Member {
        /// The member's ID.
        id: u64,
        /// Its name, for messages.
        name: String,
        /// A survivor's client URL to send the removal to (it follows the leader).
        ask: String,
        /// Members left, voting.
        left: usize,
        /// What `--force` overrode.
        warnings: Vec<String>,
    },
    /// No member has that peer URL: nothing to remove (done already).
    NotAMember,
}

/// Why a removal is refused now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; {fix}")]
pub struct Refusal {
    /// What makes it unsafe.
    pub reason: String,
    /// What to do about it.
    pub fix: String,
}

/// Members that answered: client URL and view.
type Answered<'s> = Vec<(&'s String, &'s View)>;

/// The members that answered (all but `exclude`), once they are proved to agree: one
/// membership, one leader, no alarm, and no learner other than one with peer URL
/// `learner_allowed`. Returns the first of them (the member to ask) and every one.
fn agreed<'s>(
    survey: &'s Survey,
    exclude: Option<&str>,
    learner_allowed: Option<&str>,
) -> Result<(&'s String, &'s View, Answered<'s>), Refusal> {
    let refuse = |reason: String, fix: &str| Refusal {
        reason,
        fix: fix.to_owned(),
    };
    let survivors: Answered = survey
        .answers
        .iter()
        .filter(|(e, _)| Some(e.as_str()) != exclude)
        .filter_map(|(e, r)| r.as_ref().ok().map(|v| (e, v)))
        .collect();
    let Some((ask, first)) = survivors.first().copied() else {
        let why: Vec<String> = survey
            .answers
            .iter()
            .filter_map(|(e, r)| r.as_ref().err().map(|m| format!("{e}: {m}")))
            .collect();
        return Err(refuse(
            format!(
                "no other etcd member answered ({})",
                if why.is_empty() {
                    "none to ask".to_owned()
                } else {
                    why.join("; ")
                }
            ),
            "without a member to ask there is no quorum to change the membership; start the cluster (`pangaea-ctl start`) first",
        ));
    };
    let membership = |v: &View| -> BTreeSet<(u64, Vec<String>, bool)> {
        v.members
            .iter()
            .map(|m| {
                let mut p = m.peer_urls.clone();
                p.sort();
                (m.id, p, m.is_learner)
            })
            .collect()
    };
    let agreed = membership(first);
    if let Some((e, _)) = survivors.iter().find(|(_, v)| membership(v) != agreed) {
        return Err(refuse(
            format!("etcd members disagree on the membership ({ask} and {e})"),
            "a membership change is still in progress; retry in a few seconds",
        ));
    }
    if let Some((e, _)) = survivors.iter().find(|(_, v)| v.leader == 0) {
        return Err(refuse(
            format!("etcd member {e} has no leader"),
            "the cluster has no quorum now; bring the missing members back first",
        ));
    }
    if survivors.iter().any(|(_, v)| v.leader != first.leader) {
        return Err(refuse(
            "etcd members follow different leaders".into(),
            "an election is in progress; retry in a few seconds",
        ));
    }
    if let Some(l) = first.members.iter().find(|m| {
        m.is_learner
            && !m
                .peer_urls
                .iter()
                .any(|u| Some(u.as_str()) == learner_allowed)
    }) {
        return Err(refuse(
            format!(
                "learner {} ({:x}) is not promoted yet",
                display_name(l),
                l.id
            ),
            "wait until it is a voting member (one change at a time)",
        ));
    }
    let alarms: BTreeSet<&String> = survivors.iter().flat_map(|(_, v)| &v.alarms).collect();
    if !alarms.is_empty() {
        let list: Vec<&str> = alarms.iter().map(|s| s.as_str()).collect();
        return Err(refuse(
            format!("etcd alarms are raised: {}", list.join(", ")),
            "resolve them first (`etcdctl alarm list`; after freeing space, `etcdctl alarm disarm`)",
        ));
    }
    Ok((ask, first, survivors))
}

/// The rule for removing the member with peer URL `target` (whose own endpoint, if any, is
/// `target_endpoint`), given what the members answered. With `force`, losing quorum or
/// leaving an even number of members is allowed (and reported as warnings); a divided or
/// leaderless cluster, a pending learner or a raised alarm never is.
pub fn check_removal(
    survey: &Survey,
    target: &str,
    target_endpoint: Option<&str>,
    force: bool,
) -> Result<Removal, Refusal> {
    let refuse = |reason: String, fix: &str| Refusal {
        reason,
        fix: fix.to_owned(),
    };
    let (ask, first, survivors) = agreed(survey, target_endpoint, None)?;
    let Some(member) = first
        .members
        .iter()
        .find(|m| m.peer_urls.iter().any(|u| u == target))
    else {
        return Ok(Removal::NotAMember);
    };
    let voting = first.members.len();
    let left = voting - 1;
    if left == 0 {
        return Err(refuse(
            format!("{} is the last etcd member", display_name(member)),
            "use `pangaea-ctl down` to delete the whole cluster",
        ));
    }
    let answered: BTreeSet<u64> = survivors.iter().map(|(_, v)| v.member_id).collect();
    let healthy_left = first
        .members
        .iter()
        .filter(|m| m.id != member.id && answered.contains(&m.id))
        .count();
    let quorum_left = left / 2 + 1;
    let mut warnings = Vec::new();
    if healthy_left < quorum_left {
        warnings.push(format!(
            "the {left} members left need {quorum_left} to keep quorum, and only {healthy_left} answer: etcd would stop accepting writes"
        ));
    }
    if left % 2 == 0 {
        warnings.push(format!(
            "{left} members would be left: an even number tolerates no more failures than {} (quorum {quorum_left} of {left})",
            left - 1
        ));
    }
    if !warnings.is_empty() && !force {
        return Err(refuse(
            format!(
                "removing {} ({:x}) is unsafe: {}",
                display_name(member),
                member.id,
                warnings.join("; ")
            ),
            "add a node first (so an odd number stays), or pass --force to remove it anyway",
        ));
    }
    Ok(Removal::Member {
        id: member.id,
        name: display_name(member),
        ask: ask.clone(),
        left,
        warnings,
    })
}

/// An addition the cluster can take now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addition {
    /// Add a learner with the peer URL, asking the member at `ask` (a client URL).
    Add {
        /// The member to ask.
        ask: String,
    },
    /// A member with the peer URL exists already (an earlier, interrupted run added it).
    Exists {
        /// Its ID.
        id: u64,
        /// Whether it is still a learner.
        is_learner: bool,
        /// The member to ask.
        ask: String,
    },
}

/// The rule for adding a member with peer URL `target`, given what the members answered:
/// they agree, follow one leader, raise no alarm, every member answers (a member added
/// while another is down raises the quorum the survivors must reach), and no learner is
/// pending but the target itself (etcd promotes one learner at a time). Returns the
/// addition and the membership it applies to.
pub fn check_addition(survey: &Survey, target: &str) -> Result<(Addition, Vec<Member>), Refusal> {
    let (ask, first, survivors) = agreed(survey, None, Some(target))?;
    let is_target = |m: &Member| m.peer_urls.iter().any(|u| u == target);
    let answered: BTreeSet<u64> = survivors.iter().map(|(_, v)| v.member_id).collect();
    if let Some(m) = first
        .members
        .iter()
        .find(|m| !is_target(m) && !answered.contains(&m.id))
    {
        return Err(Refusal {
            reason: format!(
                "etcd member {} ({:x}) does not answer, and a new member raises the quorum the others must reach",
                display_name(m),
                m.id
            ),
            fix: "bring it back first (`pangaea-ctl start`, or `pangaea-ctl node reboot`), or remove it (`pangaea-ctl node remove`)".into(),
        });
    }
    let addition = match first.members.iter().find(|m| is_target(m)) {
        Some(m) => Addition::Exists {
            id: m.id,
            is_learner: m.is_learner,
            ask: ask.clone(),
        },
        None => Addition::Add { ask: ask.clone() },
    };
    Ok((addition, first.members.clone()))
}

fn display_name(m: &Member) -> String {
    if m.name.is_empty() {
        m.peer_urls.first().cloned().unwrap_or_default()
    } else {
        m.name.clone()
    }
}

/// etcd's gateway writes 64-bit integers as strings (and leaves zero out).
mod u64_string {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum N {
            S(String),
            N(u64),
        }
        match N::deserialize(d)? {
            N::N(n) => Ok(n),
            N::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, learner: bool) -> Member {
        Member {
            id,
            name: format!("node-{id}"),
            peer_urls: vec![peer(id)],
            client_urls: vec![client(id)],
            is_learner: learner,
        }
    }

    fn peer(id: u64) -> String {
        format!("https://10.0.0.{id}:2380")
    }

    fn client(id: u64) -> String {
        format!("https://10.0.0.{id}:2379")
    }

    /// Members `ids` (plus `learners`), all following `leader`; `down` do not answer.
    fn cluster(ids: &[u64], learners: &[u64], leader: u64, down: &[u64]) -> Survey {
        let members: Vec<Member> = ids
            .iter()
            .map(|i| member(*i, false))
            .chain(learners.iter().map(|i| member(*i, true)))
            .collect();
        Survey {
            answers: ids
                .iter()
                .map(|i| {
                    let r = if down.contains(i) {
                        Err("connection refused".to_owned())
                    } else {
                        Ok(View {
                            member_id: *i,
                            leader,
                            members: members.clone(),
                            alarms: vec![],
                        })
                    };
                    (client(*i), r)
                })
                .collect(),
        }
    }

    fn check(s: &Survey, id: u64, force: bool) -> Result<Removal, Refusal> {
        check_removal(s, &peer(id), Some(&client(id)), force)
    }

    #[test]
    fn five_to_four_is_refused_without_force_and_names_the_member_by_id() {
        let s = cluster(&[1, 2, 3, 4, 5], &[], 1, &[]);
        let e = check(&s, 5, false).unwrap_err();
        assert!(e.reason.contains("node-5 (5)"), "{e}");
        assert!(e.reason.contains("4 members would be left"), "{e}");
        assert!(e.fix.contains("--force"), "{e}");
        match check(&s, 5, true).unwrap() {
            Removal::Member {
                id, left, warnings, ..
            } => {
                assert_eq!((id, left), (5, 4));
                assert_eq!(warnings.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn four_to_three_is_allowed_and_asks_a_survivor() {
        let s = cluster(&[1, 2, 3, 4], &[], 2, &[]);
        assert_eq!(
            check(&s, 1, false).unwrap(),
            Removal::Member {
                id: 1,
                name: "node-1".into(),
                ask: client(2),
                left: 3,
                warnings: vec![]
            }
        );
    }

    #[test]
    fn three_to_two_counts_as_unsafe() {
        let s = cluster(&[1, 2, 3], &[], 1, &[]);
        let e = check(&s, 3, false).unwrap_err();
        assert!(e.reason.contains("2 members would be left"), "{e}");
    }

    #[test]
    fn a_dead_target_is_fine_but_a_dead_survivor_counts_against_quorum() {
        // 5 members, the target and another one down: 4 left, 3 answer, quorum 3. Even, so
        // refused without --force, but quorum holds.
        let s = cluster(&[1, 2, 3, 4, 5], &[], 1, &[4, 5]);
        match check(&s, 5, true).unwrap() {
            Removal::Member { warnings, ask, .. } => {
                assert_eq!(warnings.len(), 1, "only the even size: {warnings:?}");
                assert_eq!(ask, client(1));
            }
            other => panic!("{other:?}"),
        }
        // 5 members, two others down: removing a healthy one leaves 4 with 2 answering.
        let s = cluster(&[1, 2, 3, 4, 5], &[], 1, &[4, 5]);
        let e = check(&s, 3, false).unwrap_err();
        assert!(e.reason.contains("only 2 answer"), "{e}");
        assert!(
            check(&s, 3, true).is_ok(),
            "--force overrides a quorum loss"
        );
    }

    #[test]
    fn never_with_a_learner_an_alarm_a_split_view_or_no_leader() {
        let learner = cluster(&[1, 2, 3, 4], &[9], 1, &[]);
        assert!(
            check(&learner, 4, true)
                .unwrap_err()
                .reason
                .contains("learner node-9")
        );

        let mut alarm = cluster(&[1, 2, 3, 4], &[], 1, &[]);
        if let Ok(v) = &mut alarm.answers[1].1 {
            v.alarms.push("2: NOSPACE".into());
        }
        assert!(
            check(&alarm, 4, true)
                .unwrap_err()
                .reason
                .contains("NOSPACE")
        );

        let mut split = cluster(&[1, 2, 3, 4], &[], 1, &[]);
        if let Ok(v) = &mut split.answers[2].1 {
            v.members.pop();
        }
        assert!(
            check(&split, 4, true)
                .unwrap_err()
                .reason
                .contains("disagree")
        );

        let leaderless = cluster(&[1, 2, 3, 4], &[], 0, &[]);
        assert!(
            check(&leaderless, 4, true)
                .unwrap_err()
                .reason
                .contains("no leader")
        );

        let nobody = cluster(&[1, 2], &[], 1, &[1]);
        let e = check(&nobody, 2, true).unwrap_err();
        assert!(e.reason.contains("no other etcd member answered"), "{e}");
    }

    #[test]
    fn the_last_member_is_never_removed_and_an_absent_one_is_done() {
        let one = cluster(&[1, 2], &[], 1, &[]);
        // Remove 2 of 2 with force → 1 left, fine; then the last one is refused.
        assert!(check(&one, 2, true).is_ok());
        let single = Survey {
            answers: vec![(
                client(1),
                Ok(View {
                    member_id: 1,
                    leader: 1,
                    members: vec![member(1, false)],
                    alarms: vec![],
                }),
            )],
        };
        let e = check_removal(&single, &peer(1), None, true).unwrap_err();
        assert!(e.reason.contains("last etcd member"), "{e}");
        assert_eq!(check(&one, 7, false).unwrap(), Removal::NotAMember);
    }

    #[test]
    fn whole_means_every_member_answers_with_one_leader() {
        assert!(all_serving(&cluster(&[1, 2, 3], &[], 2, &[])));
        assert!(!all_serving(&cluster(&[1, 2, 3], &[], 2, &[3])), "one down");
        assert!(!all_serving(&cluster(&[1, 2, 3], &[], 0, &[])), "no leader");
        // A member listed but not asked (its machine not running) is not whole either.
        let mut s = cluster(&[1, 2, 3], &[], 2, &[]);
        s.answers.pop();
        assert!(!all_serving(&s));
        assert!(describe(&cluster(&[1, 2], &[], 1, &[2])).contains("connection refused"));
    }

    #[test]
    fn a_snapshot_must_end_with_the_hash_of_its_content() {
        use sha2::Digest as _;
        let body = b"some database pages".repeat(100);
        let mut whole = body.clone();
        whole.extend_from_slice(&sha2::Sha256::digest(&body));
        let mut ok = SnapshotCheck::default();
        for piece in whole.chunks(7) {
            ok.update(piece);
        }
        assert_eq!(ok.finish(), Ok(whole.len() as u64));

        let mut torn = SnapshotCheck::default();
        torn.update(&whole[..whole.len() - 1]);
        assert!(torn.finish().unwrap_err().contains("does not match"));
        let mut altered = SnapshotCheck::default();
        let mut bad = whole.clone();
        bad[3] ^= 1;
        altered.update(&bad);
        assert!(altered.finish().is_err());
        let mut short = SnapshotCheck::default();
        short.update(b"tiny");
        assert!(short.finish().unwrap_err().contains("too short"));
    }

    #[test]
    fn the_gateway_json_parses() {
        let list: MemberList = serde_json::from_str(
            r#"{"header":{"cluster_id":"1","member_id":"3319814642761637952","raft_term":"2"},"members":[{"ID":"3319814642761637952","name":"a","peerURLs":["http://127.0.0.1:23800"],"clientURLs":["http://127.0.0.1:23790"]},{"ID":"7832943133393435395","peerURLs":["http://127.0.0.1:23801"],"isLearner":true}]}"#,
        )
        .unwrap();
        assert_eq!(list.header.member_id, 3319814642761637952);
        assert!(list.members[1].is_learner && list.members[1].name.is_empty());
        let s: Status = serde_json::from_str(r#"{"version":"3.4.23","leader":"42"}"#).unwrap();
        assert_eq!(s.leader, 42);
        let a: Alarms = serde_json::from_str("{}").unwrap();
        assert!(a.alarms.is_empty());
    }
}
