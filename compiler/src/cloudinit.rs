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
    }
}
