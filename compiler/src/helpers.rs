//! Template helpers. Each is a plain function over JSON arguments, registered under its
//! name with its arity; a wrong number or type of arguments is an error that names the
//! helper, and handlebars adds the template and line. Every helper has its own tests below.
//!
//! | helper | example | result |
//! |---|---|---|
//! | `base64` | `{{base64 "ab"}}` | `YWI=` |
//! | `indent` | `{{indent 4 text}}` | every line of `text` indented by 4 spaces |
//! | `to_json` | `{{to_json node.labels}}` | compact JSON |
//! | `to_yaml` | `{{to_yaml value}}` | YAML, no document marker |
//! | `join` | `{{join list ","}}` | items joined |
//! | `etcd_initial_cluster` | `{{etcd_initial_cluster nodes}}` | `n1=https://10.0.0.1:2380,…` for etcd nodes |
//! | `etcd_endpoints` | `{{etcd_endpoints nodes}}` | `https://10.0.0.1:2379,…` |
//! | `nodes_with_role` | `{{#each (nodes_with_role nodes "worker")}}` | the nodes holding a role |
//! | `cidr_host` | `{{cidr_host "10.96.0.0/12" 10}}` | `10.96.0.10` |
//! | `read_file` | `{{read_file "files/ca.pem"}}` | a file relative to the cluster directory |
//! | `secret_from_files` | `{{secret_from_files "n" "ns" files}}` | a Secret manifest from files |
//! | `quote_systemd` | `{{quote_systemd s}}` | `"…"` with systemd escapes |
//! | `quote_shell` | `{{quote_shell s}}` | `'…'` safe for sh |

use crate::cidr::Cidr;
use crate::roles::Role;
use base64::Engine;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde_json::{Value, json};
use std::path::{Component, Path, PathBuf};

type HelperFn = dyn Fn(&[Value]) -> Result<Value, String> + Send + Sync;

/// A helper's name, argument names and implementation.
type Plain = (
    &'static str,
    &'static [&'static str],
    fn(&[Value]) -> Result<Value, String>,
);

/// A helper with a fixed arity, implemented by a plain function.
struct Fixed {
    name: &'static str,
    args: &'static [&'static str],
    f: Box<HelperFn>,
}

impl HelperDef for Fixed {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let given: Vec<Value> = h.params().iter().map(|p| p.value().clone()).collect();
        if given.len() != self.args.len() {
            return Err(RenderErrorReason::Other(format!(
                "helper {} takes {} argument(s) ({}), got {}",
                self.name,
                self.args.len(),
                self.args.join(", "),
                given.len()
            ))
            .into());
        }
        (self.f)(&given)
            .map(ScopedJson::Derived)
            .map_err(|m| RenderErrorReason::Other(format!("helper {}: {m}", self.name)).into())
    }
}

fn str_arg<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{what} must be a string, got {v}"))
}

fn array_arg<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what} must be a list, got {}", short(v)))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}…", &s[..40])
    } else {
        s
    }
}

/// `{{base64 text}}`: standard base64 of the text (kubeconfig data, secrets).
pub fn base64(a: &[Value]) -> Result<Value, String> {
    Ok(json!(
        base64::engine::general_purpose::STANDARD.encode(str_arg(&a[0], "text")?)
    ))
}

/// `{{indent 4 text}}`: every non-empty line of `text` indented by that many spaces, to
/// embed a document in YAML.
pub fn indent(a: &[Value]) -> Result<Value, String> {
    let n = a[0]
        .as_u64()
        .ok_or_else(|| format!("width must be a number, got {}", a[0]))? as usize;
    let text = str_arg(&a[1], "text")?;
    let pad = " ".repeat(n);
    Ok(json!(
        text.lines()
            .map(|l| if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    ))
}

/// `{{to_json value}}`: compact JSON, which is also a valid YAML scalar or flow value.
pub fn to_json(a: &[Value]) -> Result<Value, String> {
    Ok(json!(
        serde_json::to_string(&a[0]).map_err(|e| e.to_string())?
    ))
}

/// `{{to_yaml value}}`: block YAML without the document marker or trailing newline.
pub fn to_yaml(a: &[Value]) -> Result<Value, String> {
    let y = serde_norway::to_string(&a[0]).map_err(|e| e.to_string())?;
    Ok(json!(y.trim_start_matches("---\n").trim_end()))
}

/// `{{join list ","}}`: the items joined by the separator (strings as they are, other
/// values as JSON).
pub fn join(a: &[Value]) -> Result<Value, String> {
    let items = array_arg(&a[0], "list")?;
    let sep = str_arg(&a[1], "separator")?;
    Ok(json!(
        items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(sep)
    ))
}

fn etcd_nodes(nodes: &Value) -> Result<Vec<(&str, &str)>, String> {
    let list = array_arg(nodes, "nodes")?;
    let mut out = Vec::new();
    for n in list {
        if n.get("is_etcd").and_then(Value::as_bool).unwrap_or(false) {
            let name = n
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a node has no name")?;
            let addr = n
                .get("address")
                .and_then(Value::as_str)
                .ok_or("a node has no address")?;
            out.push((name, addr));
        }
    }
    if out.is_empty() {
        return Err("no node has the etcd role".into());
    }
    Ok(out)
}

/// etcd's peer URL on a node: what identifies its member (membership changes act on it).
pub fn etcd_peer_url(address: impl std::fmt::Display) -> String {
    format!("https://{address}:2380")
}

/// etcd's client URL on a node.
pub fn etcd_client_url(address: impl std::fmt::Display) -> String {
    format!("https://{address}:2379")
}

/// One member in etcd's `--initial-cluster`: `name=https://address:2380`.
pub fn etcd_initial_cluster_entry(name: &str, address: impl std::fmt::Display) -> String {
    format!("{name}={}", etcd_peer_url(address))
}

/// `{{etcd_initial_cluster nodes}}`: etcd's `--initial-cluster`,
/// `name=https://address:2380,…` over the nodes with the etcd role.
pub fn etcd_initial_cluster(a: &[Value]) -> Result<Value, String> {
    Ok(json!(
        etcd_nodes(&a[0])?
            .iter()
            .map(|(n, ip)| etcd_initial_cluster_entry(n, ip))
            .collect::<Vec<_>>()
            .join(",")
    ))
}

/// `{{etcd_endpoints nodes}}`: the etcd client URLs, `https://address:2379,…`.
pub fn etcd_endpoints(a: &[Value]) -> Result<Value, String> {
    Ok(json!(
        etcd_nodes(&a[0])?
            .iter()
            .map(|(_, ip)| etcd_client_url(ip))
            .collect::<Vec<_>>()
            .join(",")
    ))
}

/// `{{#each (nodes_with_role nodes "worker")}}`: the nodes that have the role.
pub fn nodes_with_role(a: &[Value]) -> Result<Value, String> {
    let role = str_arg(&a[1], "role")?;
    if !Role::ALL.iter().any(|r| r.as_str() == role) {
        return Err(format!(
            "unknown role {role:?}: use etcd, control-plane or worker"
        ));
    }
    let list = array_arg(&a[0], "nodes")?;
    Ok(Value::Array(
        list.iter()
            .filter(|n| {
                n.get("roles")
                    .and_then(Value::as_array)
                    .is_some_and(|r| r.iter().any(|x| x == role))
            })
            .cloned()
            .collect(),
    ))
}

/// `{{cidr_host "10.96.0.0/12" 10}}`: the n-th address of the block (`10.96.0.10`).
pub fn cidr_host(a: &[Value]) -> Result<Value, String> {
    let cidr = Cidr::parse(str_arg(&a[0], "cidr")?).map_err(|e| e.to_string())?;
    let n = a[1]
        .as_u64()
        .ok_or_else(|| format!("index must be a number, got {}", a[1]))?;
    Ok(json!(cidr.nth(n).map_err(|e| e.to_string())?.to_string()))
}

/// Quotes for a systemd command line or setting: double quotes, with `\`, `"`, `$` and `%`
/// escaped so systemd passes the value through literally.
pub fn quote_systemd(a: &[Value]) -> Result<Value, String> {
    let s = str_arg(&a[0], "text")?;
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(json!(out))
}

/// Quotes for POSIX sh: single quotes, embedded single quotes as `'\''`.
pub fn quote_shell(a: &[Value]) -> Result<Value, String> {
    Ok(json!(format!(
        "'{}'",
        str_arg(&a[0], "text")?.replace('\'', "'\\''")
    )))
}

/// Resolves `rel` inside `base`, refusing absolute paths and `..`.
fn confined(base: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "{rel:?} must be relative to the cluster directory, without '..'"
        ));
    }
    Ok(base.join(p))
}

/// `{{read_file "files/ca.pem"}}`: a file's text; the path is relative to the cluster
/// directory (`base`) and may not leave it.
pub fn read_file(base: &Path, a: &[Value]) -> Result<Value, String> {
    let path = confined(base, str_arg(&a[0], "path")?)?;
    std::fs::read_to_string(&path)
        .map(|s| json!(s))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `{{secret_from_files "name" "namespace" files}}`: a Secret manifest (YAML) with one key
/// per file, named after the file; paths as for [`read_file`].
pub fn secret_from_files(base: &Path, a: &[Value]) -> Result<Value, String> {
    let name = str_arg(&a[0], "name")?;
    let namespace = str_arg(&a[1], "namespace")?;
    let mut data = serde_json::Map::new();
    for f in array_arg(&a[2], "files")? {
        let rel = str_arg(f, "file")?;
        let path = confined(base, rel)?;
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = Path::new(rel)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        data.insert(
            key,
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
    }
    let secret = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name, "namespace": namespace }, "type": "Opaque", "data": data });
    to_yaml(&[secret])
}

/// Registers every helper on `hb`; `base` is the cluster directory for file helpers.
pub fn register(hb: &mut Handlebars<'static>, base: &Path) {
    let plain: [Plain; 12] = [
        ("base64", &["text"], base64),
        ("indent", &["width", "text"], indent),
        ("to_json", &["value"], to_json),
        ("to_yaml", &["value"], to_yaml),
        ("join", &["list", "separator"], join),
        ("etcd_initial_cluster", &["nodes"], etcd_initial_cluster),
        ("etcd_endpoints", &["nodes"], etcd_endpoints),
        ("nodes_with_role", &["nodes", "role"], nodes_with_role),
        ("cidr_host", &["cidr", "index"], cidr_host),
        ("quote_systemd", &["text"], quote_systemd),
        ("quote_shell", &["text"], quote_shell),
        ("len_of", &["list"], |a| {
            Ok(json!(a[0].as_array().map_or(0, Vec::len)))
        }),
    ];
    for (name, args, f) in plain {
        hb.register_helper(
            name,
            Box::new(Fixed {
                name,
                args,
                f: Box::new(f),
            }),
        );
    }
    let b = base.to_owned();
    hb.register_helper(
        "read_file",
        Box::new(Fixed {
            name: "read_file",
            args: &["path"],
            f: Box::new(move |a| read_file(&b, a)),
        }),
    );
    let b = base.to_owned();
    hb.register_helper(
        "secret_from_files",
        Box::new(Fixed {
            name: "secret_from_files",
            args: &["name", "namespace", "files"],
            f: Box::new(move |a| secret_from_files(&b, a)),
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Value {
        json!([
            {"name": "a", "address": "10.0.0.1", "is_etcd": true, "roles": ["etcd", "control-plane"]},
            {"name": "b", "address": "10.0.0.2", "is_etcd": false, "roles": ["worker"]},
            {"name": "c", "address": "10.0.0.3", "is_etcd": true, "roles": ["etcd", "worker"]}
        ])
    }

    fn render(tpl: &str, data: Value) -> Result<String, String> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        register(&mut hb, Path::new("."));
        hb.register_template_string("t", tpl)
            .map_err(|e| e.to_string())?;
        hb.render("t", &data).map_err(|e| e.to_string())
    }

    mod base64_helper {
        use super::*;
        #[test]
        fn encodes() {
            assert_eq!(base64(&[json!("ab")]).unwrap(), json!("YWI="));
            assert!(
                base64(&[json!(1)])
                    .unwrap_err()
                    .contains("must be a string")
            );
        }
    }

    mod indent_helper {
        use super::*;
        #[test]
        fn indents_non_empty_lines() {
            assert_eq!(
                indent(&[json!(2), json!("a\n\nb")]).unwrap(),
                json!("  a\n\n  b")
            );
            assert!(indent(&[json!("x"), json!("a")]).is_err());
        }
    }

    mod json_yaml_helpers {
        use super::*;
        #[test]
        fn serialize() {
            assert_eq!(to_json(&[json!({"a": [1]})]).unwrap(), json!("{\"a\":[1]}"));
            assert_eq!(to_yaml(&[json!({"a": 1})]).unwrap(), json!("a: 1"));
        }
    }

    mod join_helper {
        use super::*;
        #[test]
        fn joins_strings_and_numbers() {
            assert_eq!(join(&[json!(["a", 1]), json!(",")]).unwrap(), json!("a,1"));
            assert!(
                join(&[json!("a"), json!(",")])
                    .unwrap_err()
                    .contains("must be a list")
            );
        }
    }

    mod etcd_helpers {
        use super::*;
        #[test]
        fn only_etcd_members() {
            assert_eq!(
                etcd_initial_cluster(&[nodes()]).unwrap(),
                json!("a=https://10.0.0.1:2380,c=https://10.0.0.3:2380")
            );
            assert_eq!(
                etcd_endpoints(&[nodes()]).unwrap(),
                json!("https://10.0.0.1:2379,https://10.0.0.3:2379")
            );
            assert!(
                etcd_initial_cluster(&[json!([])])
                    .unwrap_err()
                    .contains("no node has the etcd role")
            );
        }
    }

    mod nodes_with_role_helper {
        use super::*;
        #[test]
        fn filters() {
            let w = nodes_with_role(&[nodes(), json!("worker")]).unwrap();
            assert_eq!(
                w.as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n["name"].as_str().unwrap())
                    .collect::<Vec<_>>(),
                ["b", "c"]
            );
            assert!(
                nodes_with_role(&[nodes(), json!("master")])
                    .unwrap_err()
                    .contains("unknown role")
            );
        }
    }

    mod cidr_host_helper {
        use super::*;
        #[test]
        fn nth_address() {
            assert_eq!(
                cidr_host(&[json!("10.96.0.0/12"), json!(10)]).unwrap(),
                json!("10.96.0.10")
            );
            assert!(
                cidr_host(&[json!("10.96.0.0/30"), json!(9)])
                    .unwrap_err()
                    .contains("outside")
            );
            assert!(
                cidr_host(&[json!("nope"), json!(1)])
                    .unwrap_err()
                    .contains("invalid CIDR")
            );
        }
    }

    mod quoting_helpers {
        use super::*;
        #[test]
        fn systemd_and_shell() {
            assert_eq!(
                quote_systemd(&[json!("a \"b\" $HOME 50%")]).unwrap(),
                json!("\"a \\\"b\\\" $$HOME 50%%\"")
            );
            assert_eq!(quote_shell(&[json!("it's")]).unwrap(), json!("'it'\\''s'"));
        }
    }

    mod file_helpers {
        use super::*;
        #[test]
        fn read_and_secret_confined_to_the_cluster_dir() {
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir(d.path().join("files")).unwrap();
            std::fs::write(d.path().join("files/token"), "s3cret").unwrap();
            assert_eq!(
                read_file(d.path(), &[json!("files/token")]).unwrap(),
                json!("s3cret")
            );
            assert!(
                read_file(d.path(), &[json!("/etc/passwd")])
                    .unwrap_err()
                    .contains("relative")
            );
            assert!(
                read_file(d.path(), &[json!("../x")])
                    .unwrap_err()
                    .contains("relative")
            );
            assert!(
                read_file(d.path(), &[json!("files/none")])
                    .unwrap_err()
                    .contains("cannot read")
            );
            let s = secret_from_files(
                d.path(),
                &[json!("app"), json!("prod"), json!(["files/token"])],
            )
            .unwrap();
            let s = s.as_str().unwrap();
            assert!(
                s.contains("kind: Secret")
                    && s.contains("namespace: prod")
                    && s.contains("token: czNjcmV0"),
                "{s}"
            );
        }
    }

    #[test]
    fn wrong_arity_and_types_name_the_helper_template_and_line() {
        let e = render("line one\n{{base64 \"a\" \"b\"}}", json!({})).unwrap_err();
        assert!(e.contains("helper base64 takes 1 argument"), "{e}");
        assert!(e.contains("\"t\" line 2"), "{e}");
        let e = render("{{cidr_host cidr 1}}", json!({"cidr": 5})).unwrap_err();
        assert!(e.contains("helper cidr_host: cidr must be a string"), "{e}");
        let e = render("{{no_such_helper 1}}", json!({})).unwrap_err();
        assert!(e.to_lowercase().contains("no_such_helper"), "{e}");
    }

    #[test]
    fn helpers_compose_in_templates() {
        let out = render(
            "{{#each (nodes_with_role nodes \"etcd\")}}{{name}} {{/each}}|{{join (nodes_with_role nodes \"worker\") \"-\"}}",
            json!({"nodes": nodes()}),
        );
        assert!(out.unwrap().starts_with("a c |"));
    }
}
