//! Google credentials from a service-account key file (`GOOGLE_APPLICATION_CREDENTIALS`):
//! a JWT signed with the key (RS256) is exchanged at the key's `token_uri` for an OAuth2
//! access token (RFC 7523), which is kept and used until [`REFRESH_BEFORE`] its expiry.

use super::compute::ComputeError;
use base64::Engine;
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// The scope Pangaea asks for: Compute Engine only.
pub const SCOPE: &str = "https://www.googleapis.com/auth/compute";

/// How long before its expiry a token is replaced.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);

/// The fields of a service-account key file that the token exchange uses.
#[derive(Clone, Deserialize)]
pub struct Key {
    /// Must be `service_account`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The account.
    pub client_email: String,
    /// The key's ID (the JWT's `kid`).
    #[serde(default)]
    pub private_key_id: String,
    /// The key, PKCS#8 PEM.
    pub private_key: String,
    /// Where tokens are exchanged.
    pub token_uri: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// A service account's token source.
#[derive(Debug)]
pub struct ServiceAccount {
    key: Key,
    signer: ring::rsa::KeyPair,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

fn auth(m: String) -> ComputeError {
    ComputeError::Auth(m)
}

impl ServiceAccount {
    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<ServiceAccount, ComputeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| auth(format!("service-account key {}: {e}", path.display())))?;
        let key: Key = serde_json::from_str(&text).map_err(|e| {
            auth(format!(
                "service-account key {}: not a key file ({e})",
                path.display()
            ))
        })?;
        ServiceAccount::new(key)
            .map_err(|e| auth(format!("service-account key {}: {e}", path.display())))
    }

    /// A token source for `key`.
    pub fn new(key: Key) -> Result<ServiceAccount, String> {
        if key.kind != "service_account" {
            return Err(format!("type {:?}, not service_account", key.kind));
        }
        let der = pem_body(&key.private_key, "PRIVATE KEY")
            .ok_or("private_key is not a PKCS#8 PEM key")?;
        let signer = ring::rsa::KeyPair::from_pkcs8(&der)
            .map_err(|e| format!("private_key is not an RSA key ring accepts: {e}"))?;
        pangaea_core::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ServiceAccount {
            key,
            signer,
            http,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The signed assertion for `now` (unix seconds).
    pub fn assertion(&self, now: u64) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let header =
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.key.private_key_id});
        let claims = serde_json::json!({
            "iss": self.key.client_email,
            "scope": SCOPE,
            "aud": self.key.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.signer.public().modulus_len()];
        self.signer
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .expect("RSA signing with a valid key");
        format!("{signing_input}.{}", b64(&sig))
    }

    /// An access token: the kept one while it has more than [`REFRESH_BEFORE`] left, else a
    /// new one from the token endpoint.
    pub async fn token(&self) -> Result<String, ComputeError> {
        let mut cached = self.cached.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() + REFRESH_BEFORE < *until
        {
            return Ok(t.clone());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = format!(
            "grant_type={}&assertion={}",
            "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer",
            self.assertion(now)
        );
        let uri = &self.key.token_uri;
        let resp = self
            .http
            .post(uri)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| {
                auth(format!(
                    "token endpoint {uri}: {}",
                    pangaea_core::error_chain(&e)
                ))
            })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if !status.is_success() {
            return Err(auth(format!(
                "token endpoint {uri} refused {}'s key {}: {} {}",
                self.key.client_email,
                self.key.private_key_id,
                v["error"].as_str().unwrap_or(status.as_str()),
                v["error_description"].as_str().unwrap_or(""),
            )));
        }
        let (Some(token), Some(expires_in)) =
            (v["access_token"].as_str(), v["expires_in"].as_u64())
        else {
            return Err(auth(format!(
                "token endpoint {uri}: no access_token/expires_in in {text:.200}"
            )));
        };
        *cached = Some((
            token.to_owned(),
            Instant::now() + Duration::from_secs(expires_in),
        ));
        Ok(token.to_owned())
    }
}

/// The DER inside the first PEM block labelled `label`.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}
