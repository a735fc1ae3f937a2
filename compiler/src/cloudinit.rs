//! The cloud-init user-data every provider gives a node (`cloud-init/user-data.yaml.hbs`):
//! agent configuration, single-use token, the agent binary fetched from the controller and
//! checked against its digest, and the agent's unit.

use serde::Serialize;

const TEMPLATE: &str = include_str!("../../cloud-init/user-data.yaml.hbs");

/// What differs between nodes' user-data.
#[derive(Clone, Debug, Serialize)]
pub struct UserData {
    /// The node's name (also its hostname).
    pub node: pangaea_core::NodeName,
    /// HOST:PORT of the controller's gRPC endpoint, as the node reaches it.
    pub controller: String,
    /// SPKI SHA-256 pin of the controller's CA (`sha256:<hex>`): the agent trusts nothing
    /// else when it first connects.
    pub ca_pin: String,
    /// The single-use bootstrap token the agent joins with.
    pub token: String,
    /// Where the node downloads the agent binary.
    pub agent_url: String,
    /// SHA-256 (hex) the downloaded agent binary must have.
    pub agent_sha256: String,
    /// The controller's reverse SSH tunnel, where nodes reach it through one (`None`: they
    /// dial `controller` directly).
    pub tunnel: Option<TunnelLogin>,
    /// `HOST[:PORT]` of the cloud's metadata server, where `up` sets a recovery token on
    /// clouds whose nodes it cannot write to (Compute Engine; `None` elsewhere).
    pub metadata_server: Option<String>,
}

/// What a node sets up for the controller's reverse SSH tunnel: a user with no shell and
/// the one key it accepts.
#[derive(Clone, Debug, Serialize)]
pub struct TunnelLogin {
    /// The user the tunnel logs in as.
    pub user: String,
    /// Its `authorized_keys` line (with the options that restrict it).
    pub authorized_key: String,
}

/// Renders the user-data for one node (strict: a missing value is an error, not an empty
/// string).
pub fn render(data: &UserData) -> Result<String, crate::templates::TemplateError> {
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    crate::helpers::register(&mut hb, std::path::Path::new("."));
    hb.render_template(TEMPLATE, data).map_err(|e| {
        crate::templates::TemplateError::Render(format!("cloud-init/user-data.yaml: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> UserData {
        UserData {
            node: "node-1".parse().unwrap(),
            controller: "10.213.0.1:7443".into(),
            ca_pin: format!("sha256:{}", "ab".repeat(32)),
            token: "abcdef.0123456789abcdef".into(),
            agent_url: "http://10.213.0.1:7444/pangaea-agent".into(),
            agent_sha256: "cd".repeat(32),
            tunnel: None,
            metadata_server: None,
        }
    }

    #[test]
    fn renders_and_parses_as_yaml() {
        let text = render(&sample()).unwrap();
        assert!(text.starts_with("#cloud-config\n"));
        let v: serde_json::Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(v["write_files"][1]["content"], "abcdef.0123456789abcdef");
        assert!(
            v["write_files"][0]["content"]
                .as_str()
                .unwrap()
                .contains("node_name: \"node-1\"")
        );
        assert!(text.contains(&"cd".repeat(32)));
        // The agent's unit downloads it first, and keeps trying while it cannot.
        let files = v["write_files"].as_array().unwrap();
        let unit = files
            .iter()
            .find(|f| f["path"] == "/etc/systemd/system/pangaea-agent.service")
            .unwrap()["content"]
            .as_str()
            .unwrap();
        assert!(
            unit.contains("ExecStartPre=/usr/local/lib/pangaea/fetch-agent")
                && unit.contains("Restart=always")
                && unit.contains("StartLimitIntervalSec=0"),
            "{unit}"
        );
        let fetch = files
            .iter()
            .find(|f| f["path"] == "/usr/local/lib/pangaea/fetch-agent")
            .unwrap();
        assert_eq!(fetch["permissions"], "0755");
        let fetch = fetch["content"].as_str().unwrap();
        assert!(fetch.starts_with("#!/bin/sh\nset -e\n"), "{fetch}");
        assert!(
            fetch.contains(&format!("echo '{}  '$tmp | sha256sum -c", "cd".repeat(32))),
            "{fetch}"
        );
        assert!(
            !text.contains("tunnel-authorized-keys") && !text.contains("useradd"),
            "{text}"
        );
    }

    #[test]
    fn a_tunnelled_node_gets_the_tunnel_user_and_key_before_the_agent_download() {
        let key = r#"restrict,permitlisten="127.0.0.1:7443" ssh-ed25519 AAAA t@c"#;
        let text = render(&UserData {
            tunnel: Some(TunnelLogin {
                user: "pangaea-tunnel".into(),
                authorized_key: key.into(),
            }),
            ..sample()
        })
        .unwrap();
        let v: serde_json::Value = serde_norway::from_str(&text).unwrap();
        // The token stays the second file (what reads it back finds it there).
        assert_eq!(v["write_files"][1]["content"], "abcdef.0123456789abcdef");
        let keys = v["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "/etc/pangaea/tunnel-authorized-keys")
            .expect("the key file");
        assert_eq!(keys["content"], format!("{key}\n"));
        let runcmd: Vec<String> = v["runcmd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        let setup = runcmd
            .iter()
            .position(|c| c.contains("useradd") && c.contains("pangaea-tunnel"))
            .expect("the tunnel user is made");
        let agent = runcmd
            .iter()
            .position(|c| c.contains("pangaea-agent.service"))
            .unwrap();
        assert!(setup < agent, "{runcmd:?}");
    }
}
