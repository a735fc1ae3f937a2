//! The API's external address, where the provider reserves one (GCE's static address,
//! `provider.staticApiAddress`): the provider reserves it and gives it to the API node
//! ([`ClusterModel::api_node`](pangaea_compiler::model::ClusterModel::api_node)); `up`
//! records it here, in `.pangaea/api-address`; the compilation reads it back so that every
//! API server certificate names it (`ClusterModel::api_external`); `kubeconfig --external`
//! points at it.
//!
//! Recorded rather than asked for at each compilation: compiling (`plan`, the daemon's
//! re-plans) must not call a cloud API.

use crate::state_dir::StateDir;
use std::net::Ipv4Addr;

/// The recorded address is unreadable.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message} (`pangaea-ctl up` records it again)")]
pub struct ApiAddressError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What is wrong.
    pub message: String,
}

/// The recorded address; `None` when there is none.
pub fn load(state: &StateDir) -> Result<Option<Ipv4Addr>, ApiAddressError> {
    let path = state.api_address();
    let error = |message: String| ApiAddressError {
        path: path.clone(),
        message,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| error(format!("{:?} is not an IPv4 address: {e}", text.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(e.to_string())),
    }
}

/// Records `address` (`None`: removes the record); returns whether it changed.
pub fn save(state: &StateDir, address: Option<Ipv4Addr>) -> Result<bool, ApiAddressError> {
    if load(state).ok().flatten() == address && (address.is_some() || !state.api_address().exists())
    {
        return Ok(false);
    }
    let path = state.api_address();
    let result = match address {
        Some(a) => pangaea_core::fsutil::atomic_write(&path, format!("{a}\n").as_bytes(), 0o644)
            .map_err(|e| e.to_string()),
        None => pangaea_core::fsutil::remove_durably(&path).map_err(|e| e.to_string()),
    };
    result
        .map(|()| true)
        .map_err(|message| ApiAddressError { path, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_loaded_changed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert_eq!(load(&state).unwrap(), None);
        assert!(!save(&state, None).unwrap(), "nothing to remove");
        let a: Ipv4Addr = "203.0.113.10".parse().unwrap();
        assert!(save(&state, Some(a)).unwrap());
        assert!(!save(&state, Some(a)).unwrap(), "the same address again");
        assert_eq!(load(&state).unwrap(), Some(a));
        assert!(save(&state, None).unwrap());
        assert_eq!(load(&state).unwrap(), None);
        std::fs::write(state.api_address(), "not an address\n").unwrap();
        let e = load(&state).unwrap_err().to_string();
        assert!(
            e.contains("api-address") && e.contains("not an IPv4 address"),
            "{e}"
        );
    }
}
