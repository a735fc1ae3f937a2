//! `provider:` in `pangaea.yaml`: where the nodes run, and every fact of the cluster that
//! depends on it.
//!
//! ```yaml
//! provider: { type: local }                                  # the default
//! provider: { type: vagrant, boxName: debian/trixie64 }
//! provider: { type: vagrant, syncedFolders: [{host: ./src, guest: /srv/src, type: nfs}] }
//! provider: { type: gce, project: demo, zones: [europe-west1-b, europe-west1-c], spot: true }
//! provider: { type: gce, advertiseAddress: 203.0.113.7, apiAccess: [198.51.100.0/24] }
//! ```
//!
//! Each type takes only its own fields: `{type: local, spot: true}` is refused, at `spot`,
//! rather than silently ignored. What differs by provider (machine types, the default block
//! device of a disk, how services meant to be reachable from outside are exposed) is a method
//! of [`ProviderKind`], the one owner of that rule; the rest of the compiler asks it instead
//! of comparing provider names.
//!
//! # Why `Provider` deserializes by hand
//!
//! serde's internally tagged enums (`#[serde(tag = "type")]`) buffer the whole mapping before
//! they pick a variant, so errors inside it lose their line and column, and they do not
//! combine with `deny_unknown_fields`. The visitor here reads the mapping key by key and
//! raises each error while serde_norway is reading the offending scalar, so the error carries
//! that scalar's location like every other configuration error:
//!
//! * a field of another type after `type` (the usual order): at that field's key;
//! * a field of another type before `type`: at the `type` value that rules it out;
//! * a field of another type when `type` is left out (so local): at the start of the
//!   `provider` mapping, the closest place serde_norway knows once the mapping has ended.

use crate::expose::ExposeType;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// The type of provider, without its settings: what code outside the configuration uses to
/// tell providers apart. Serializes as `pangaea.yaml` spells it (`local`, `vagrant`, `gce`),
/// which is also what templates see as `cluster.provider`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProviderKind {
    /// systemd-nspawn machines on this host.
    #[default]
    Local,
    /// Vagrant virtual machines.
    Vagrant,
    /// Google Compute Engine instances.
    Gce,
}

impl ProviderKind {
    /// Every provider type.
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::Local,
        ProviderKind::Vagrant,
        ProviderKind::Gce,
    ];

    /// The name used in `pangaea.yaml` (`local`, `vagrant`, `gce`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Vagrant => "vagrant",
            ProviderKind::Gce => "gce",
        }
    }

    fn from_name(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Memory of a pool's `machineType`, MiB; `None` for a name the provider does not know
    /// (the pool must then give `memoryMiB`).
    ///
    /// Only GCE has machine types. Local and Vagrant machines are sized by `memoryMiB`, but
    /// read GCE's names the same way, so that a configuration written for GCE can be tried
    /// on a laptop unchanged.
    pub fn machine_memory_mib(self, machine_type: &str) -> Option<u32> {
        match self {
            ProviderKind::Gce | ProviderKind::Local | ProviderKind::Vagrant => {
                gce_machine_memory_mib(machine_type)
            }
        }
    }

    /// The block device of a pool's disk that does not name one: `disk` is its name, `index`
    /// its position in the pool's `disks`. GCE attaches disks under their name
    /// (`/dev/disk/by-id/google-NAME`); local and Vagrant machines get virtio disks in order
    /// after the root disk (`/dev/vdb`, `/dev/vdc`, …).
    pub fn default_disk_device(self, disk: &str, index: usize) -> String {
        match self {
            ProviderKind::Gce => format!("/dev/disk/by-id/google-{disk}"),
            ProviderKind::Local | ProviderKind::Vagrant => {
                format!("/dev/vd{}", (b'b' + index as u8) as char)
            }
        }
    }

    /// How an add-on service meant to be reachable from outside the cluster (monitoring's
    /// `externalAccess`) is exposed when `expose:` leaves it at ClusterIP: a LoadBalancer
    /// where the provider has load balancers; on the local provider, nodes share the host's
    /// bridge, so the service stays ClusterIP (reach it with `kubectl port-forward`).
    pub fn external_exposure(self) -> ExposeType {
        match self {
            ProviderKind::Local => ExposeType::ClusterIP,
            ProviderKind::Vagrant | ProviderKind::Gce => ExposeType::LoadBalancer,
        }
    }
}

impl Serialize for ProviderKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The zone of the node at `position` (across pools, removed nodes included) when nodes are
/// spread over `zones` in turn; `None` without zones.
pub fn in_turn(zones: &[String], position: u64) -> Option<&String> {
    (!zones.is_empty()).then(|| &zones[(position % zones.len() as u64) as usize])
}

/// What a GCE node is made of, where the configuration does not say: one owner for the
/// provider that creates nodes and for `pangaea-ctl cost` that prices them.
pub mod gce {
    /// A pool's machine type when it names none: 2 GiB, the compiler's default memory.
    pub const DEFAULT_MACHINE_TYPE: &str = "e2-small";
    /// The boot disk of every node, GiB.
    pub const BOOT_DISK_GIB: u32 = 20;
    /// The type of every disk Pangaea creates (boot and data).
    pub const DISK_TYPE: &str = "pd-balanced";
    /// The region when `provider.zones` names none (and gcloud's configuration is not
    /// asked, as for `cost`).
    pub const DEFAULT_REGION: &str = "us-central1";

    /// The machine type of a pool whose configuration names `configured`.
    pub fn machine_type(configured: Option<&str>) -> &str {
        configured.unwrap_or(DEFAULT_MACHINE_TYPE)
    }

    /// The region of a zone (`europe-west1-b` → `europe-west1`).
    pub fn region_of(zone: &str) -> &str {
        zone.rsplit_once('-').map_or(zone, |(r, _)| r)
    }
}

/// Memory of GCE's shared-core and small standard machine types, MiB.
fn gce_machine_memory_mib(machine_type: &str) -> Option<u32> {
    Some(match machine_type {
        "e2-micro" => 1024,
        "e2-small" => 2048,
        "e2-medium" => 4096,
        "e2-standard-2" | "n2-standard-2" | "n1-standard-2" => 8192,
        "e2-standard-4" | "n2-standard-4" => 16384,
        "n1-standard-1" => 3840,
        "g1-small" => 1740,
        "f1-micro" => 614,
        _ => return None,
    })
}

/// `provider:`: the provider type and the settings only that type takes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Provider {
    /// `type: local` (also a missing `type` or `provider`); takes no settings.
    #[default]
    Local,
    /// `type: vagrant`.
    Vagrant(VagrantProvider),
    /// `type: gce`.
    Gce(GceProvider),
}

/// The settings of `provider: {type: vagrant}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VagrantProvider {
    /// `boxName`: the base box (default: the provider's).
    pub box_name: Option<String>,
    /// `syncedFolders`: host folders shared with every node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub synced_folders: Vec<SyncedFolder>,
}

/// One entry of `syncedFolders`: a folder of the operator's machine shared with every
/// Vagrant node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncedFolder {
    /// `host`: the folder on this machine (relative paths: to `pangaea.yaml`'s directory).
    pub host: String,
    /// `guest`: where it appears in each node (an absolute path).
    pub guest: String,
    /// `type`: how it is shared (default `rsync`).
    #[serde(default, rename = "type")]
    pub sync: FolderSync,
}

impl SyncedFolder {
    /// The host folder, for a configuration in directory `dir`: `host` when absolute, else
    /// under `dir`, made absolute.
    pub fn host_path(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let p = dir.join(&self.host);
        std::path::absolute(&p).unwrap_or(p)
    }
}

/// How a synced folder reaches the nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FolderSync {
    /// Copied into each node at `up` (and by `vagrant rsync`): works everywhere, one way.
    #[default]
    Rsync,
    /// Mounted from this machine's NFS server: live in both directions; needs an NFS server
    /// (nfsd) on this machine.
    Nfs,
}

/// The settings of `provider: {type: gce}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GceProvider {
    /// `project` (default: `gcloud config get project`).
    pub project: Option<String>,
    /// `zones`: one node per zone in turn, so that nodes spread over failure domains.
    pub zones: Vec<String>,
    /// `spot`: run the nodes as Spot VMs.
    pub spot: bool,
    /// `advertiseAddress`: the address nodes dial to reach the controller (default: none;
    /// the controller reaches them through reverse SSH tunnels instead).
    pub advertise_address: Option<String>,
    /// `apiAccess`: where the API server's port may be reached from (CIDRs; default
    /// anywhere; `[]` opens it to nothing outside the cluster).
    pub api_access: Option<Vec<crate::cidr::Cidr>>,
    /// `staticApiAddress`: reserve a static external address for the API and give it to
    /// the first control-plane node (default true; read through
    /// [`GceProvider::static_api_address`]).
    pub static_api_address: Option<bool>,
}

impl GceProvider {
    /// Whether the API gets a static external address: one that survives the node's stop,
    /// start and re-creation, where an ephemeral one changes (the default; an address in use
    /// costs the same either way).
    pub fn static_api_address(&self) -> bool {
        self.static_api_address.unwrap_or(true)
    }
}

impl Provider {
    /// The provider's type.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Local => ProviderKind::Local,
            Provider::Vagrant(_) => ProviderKind::Vagrant,
            Provider::Gce(_) => ProviderKind::Gce,
        }
    }

    /// The zones nodes are spread over, in turn (GCE's `zones`; none elsewhere).
    pub fn zones(&self) -> &[String] {
        match self {
            Provider::Gce(g) => &g.zones,
            Provider::Local | Provider::Vagrant(_) => &[],
        }
    }
}

/// The keys of `provider:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Type,
    BoxName,
    Project,
    Zones,
    Spot,
    AdvertiseAddress,
    ApiAccess,
    StaticApiAddress,
    SyncedFolders,
}

impl Key {
    const ALL: [Key; 9] = [
        Key::Type,
        Key::BoxName,
        Key::SyncedFolders,
        Key::Project,
        Key::Zones,
        Key::Spot,
        Key::AdvertiseAddress,
        Key::ApiAccess,
        Key::StaticApiAddress,
    ];

    const fn name(self) -> &'static str {
        match self {
            Key::Type => "type",
            Key::BoxName => "boxName",
            Key::Project => "project",
            Key::Zones => "zones",
            Key::Spot => "spot",
            Key::AdvertiseAddress => "advertiseAddress",
            Key::ApiAccess => "apiAccess",
            Key::StaticApiAddress => "staticApiAddress",
            Key::SyncedFolders => "syncedFolders",
        }
    }

    /// The provider types that take this key.
    fn accepted_by(self) -> &'static [ProviderKind] {
        match self {
            Key::Type => &ProviderKind::ALL,
            Key::BoxName | Key::SyncedFolders => &[ProviderKind::Vagrant],
            Key::Project
            | Key::Zones
            | Key::Spot
            | Key::AdvertiseAddress
            | Key::ApiAccess
            | Key::StaticApiAddress => &[ProviderKind::Gce],
        }
    }

    fn valid_for(self, kind: ProviderKind) -> bool {
        self.accepted_by().contains(&kind)
    }

    /// The error for this key under a provider type that does not take it.
    fn not_valid<E: de::Error>(self, kind: ProviderKind, why_kind: &str) -> E {
        let accepted: Vec<&str> = self.accepted_by().iter().map(|k| k.as_str()).collect();
        let by = match accepted.as_slice() {
            [one] => format!("only provider type {one} accepts it"),
            many => format!("only provider types {} accept it", many.join(", ")),
        };
        E::custom(format_args!(
            "`{}` is not valid for provider type {kind}{why_kind}; {by}",
            self.name()
        ))
    }
}

const KEY_NAMES: [&str; 9] = [
    Key::ALL[0].name(),
    Key::ALL[1].name(),
    Key::ALL[2].name(),
    Key::ALL[3].name(),
    Key::ALL[4].name(),
    Key::ALL[5].name(),
    Key::ALL[6].name(),
    Key::ALL[7].name(),
    Key::ALL[8].name(),
];

const KIND_NAMES: [&str; 3] = [
    ProviderKind::ALL[0].as_str(),
    ProviderKind::ALL[1].as_str(),
    ProviderKind::ALL[2].as_str(),
];

/// Reads one key of `provider:`, refusing it right there when the type is already known and
/// does not take it (so the error points at the key).
struct KeySeed {
    kind: Option<ProviderKind>,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a provider field")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
        let key = Key::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| E::unknown_field(s, &KEY_NAMES))?;
        match self.kind {
            Some(kind) if !key.valid_for(kind) => Err(key.not_valid(kind, "")),
            _ => Ok(key),
        }
    }
}

/// Reads the `type` value, refusing it when a key given before it is not valid for it (so
/// the error points at the type).
struct TypeSeed<'a> {
    before: &'a [Key],
}

impl<'de> DeserializeSeed<'de> for TypeSeed<'_> {
    type Value = ProviderKind;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ProviderKind, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for TypeSeed<'_> {
    type Value = ProviderKind;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a provider type ({})", KIND_NAMES.join(", "))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<ProviderKind, E> {
        let kind = ProviderKind::from_name(s).ok_or_else(|| E::unknown_variant(s, &KIND_NAMES))?;
        match self.before.iter().find(|k| !k.valid_for(kind)) {
            Some(key) => Err(key.not_valid(kind, "")),
            None => Ok(kind),
        }
    }
}

struct ProviderVisitor;

impl<'de> Visitor<'de> for ProviderVisitor {
    type Value = Provider;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a provider mapping ({type: local}, {type: vagrant, …} or {type: gce, …})")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Provider, A::Error> {
        let mut kind = None;
        let mut seen: Vec<Key> = Vec::new();
        let mut vagrant = VagrantProvider::default();
        let mut gce = GceProvider::default();
        while let Some(key) = map.next_key_seed(KeySeed { kind })? {
            if seen.contains(&key) {
                return Err(de::Error::duplicate_field(key.name()));
            }
            match key {
                Key::Type => kind = Some(map.next_value_seed(TypeSeed { before: &seen })?),
                Key::BoxName => vagrant.box_name = map.next_value()?,
                Key::SyncedFolders => vagrant.synced_folders = map.next_value()?,
                Key::Project => gce.project = map.next_value()?,
                Key::Zones => gce.zones = map.next_value()?,
                Key::Spot => gce.spot = map.next_value()?,
                Key::AdvertiseAddress => gce.advertise_address = map.next_value()?,
                Key::ApiAccess => gce.api_access = Some(map.next_value()?),
                Key::StaticApiAddress => gce.static_api_address = Some(map.next_value()?),
            }
            seen.push(key);
        }
        let Some(kind) = kind else {
            // No `type`: local, which takes no settings.
            return match seen.first() {
                Some(key) => Err(key.not_valid(
                    ProviderKind::Local,
                    " (the default when `type` is not given)",
                )),
                None => Ok(Provider::Local),
            };
        };
        Ok(match kind {
            ProviderKind::Local => Provider::Local,
            ProviderKind::Vagrant => Provider::Vagrant(vagrant),
            ProviderKind::Gce => Provider::Gce(gce),
        })
    }
}

impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Provider, D::Error> {
        d.deserialize_struct("Provider", &KEY_NAMES, ProviderVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as the value of `provider:` in a document, and the error's
    /// (line, column, message) when it is refused.
    /// Asserts that `text` is refused at `at` (line, column) with a message containing
    /// `needle`.
    #[track_caller]
    fn refused_at(text: &str, at: (usize, usize), needle: &str) {
        let (line, column, message) = parse(text).unwrap_err();
        assert_eq!((line, column), at, "{message}");
        assert!(message.contains(needle), "{message}");
    }

    fn parse(text: &str) -> Result<Provider, (usize, usize, String)> {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            #[serde(default)]
            provider: Provider,
        }
        serde_norway::from_str::<Doc>(text)
            .map(|d| d.provider)
            .map_err(|e| {
                let l = e.location().expect("every provider error is located");
                (l.line(), l.column(), e.to_string())
            })
    }

    #[test]
    fn local_is_the_default_and_takes_no_settings() {
        assert_eq!(parse("{}").unwrap(), Provider::Local);
        assert_eq!(parse("provider:\n").unwrap(), Provider::Local);
        assert_eq!(parse("provider: {}").unwrap(), Provider::Local);
        assert_eq!(parse("provider: {type: local}").unwrap(), Provider::Local);
        assert_eq!(Provider::Local.kind(), ProviderKind::Local);
        refused_at(
            "provider:\n  type: local\n  spot: true\n",
            (3, 3),
            "`spot` is not valid for provider type local; only provider type gce accepts it",
        );
        refused_at(
            "provider: {type: local, boxName: b}",
            (1, 25),
            "only provider type vagrant accepts it",
        );
    }

    #[test]
    fn vagrant_takes_box_name_only() {
        let p = parse("provider:\n  type: vagrant\n  boxName: debian/trixie64\n").unwrap();
        assert_eq!(
            p,
            Provider::Vagrant(VagrantProvider {
                box_name: Some("debian/trixie64".into()),
                ..Default::default()
            })
        );
        assert_eq!(p.kind(), ProviderKind::Vagrant);
        assert!(p.zones().is_empty());
        assert_eq!(
            parse("provider: {type: vagrant}").unwrap(),
            Provider::Vagrant(VagrantProvider::default())
        );
        refused_at(
            "provider:\n  type: vagrant\n  boxName: b\n  zones: [a]\n",
            (4, 3),
            "`zones` is not valid for provider type vagrant; only provider type gce accepts it",
        );
    }

    #[test]
    fn gce_takes_its_six_settings() {
        let p = parse("provider:\n  type: gce\n  project: demo\n  zones: [a, b]\n  spot: true\n  advertiseAddress: 203.0.113.7\n  apiAccess: [198.51.100.0/24]\n  staticApiAddress: false\n").unwrap();
        assert_eq!(
            p,
            Provider::Gce(GceProvider {
                project: Some("demo".into()),
                zones: vec!["a".into(), "b".into()],
                spot: true,
                advertise_address: Some("203.0.113.7".into()),
                api_access: Some(vec![crate::cidr::Cidr::parse("198.51.100.0/24").unwrap()]),
                static_api_address: Some(false),
            })
        );
        let Provider::Gce(g) = &p else { unreachable!() };
        assert!(!g.static_api_address());
        assert!(GceProvider::default().static_api_address(), "on by default");
        refused_at(
            "provider:\n  type: gce\n  staticApiAddress: maybe\n",
            (3, 21),
            "invalid type",
        );
        // Not a range: refused at the value.
        refused_at(
            "provider:\n  type: gce\n  apiAccess: [anywhere]\n",
            (3, 14),
            "invalid CIDR \"anywhere\"",
        );
        assert_eq!(p.kind(), ProviderKind::Gce);
        assert_eq!(p.zones(), ["a", "b"]);
        assert_eq!(
            parse("provider: {type: gce}").unwrap(),
            Provider::Gce(GceProvider::default())
        );
        refused_at(
            "# GCE\nprovider:\n  type: gce\n  boxName: b\n",
            (4, 3),
            "`boxName` is not valid for provider type gce",
        );
    }

    #[test]
    fn a_field_before_the_type_is_refused_at_the_type() {
        refused_at(
            "provider:\n  spot: true\n  type: vagrant\n",
            (3, 9),
            "`spot` is not valid for provider type vagrant",
        );
        // In that order, the right type is still accepted.
        assert_eq!(
            parse("provider:\n  zones: [a]\n  type: gce\n")
                .unwrap()
                .zones(),
            ["a"]
        );
    }

    #[test]
    fn a_field_without_a_type_is_refused_as_not_local() {
        refused_at(
            "provider:\n  project: demo\n",
            (2, 3),
            "`project` is not valid for provider type local (the default when `type` is not given)",
        );
    }

    #[test]
    fn unknown_fields_types_and_duplicates_are_refused_where_they_are() {
        refused_at(
            "provider:\n  type: gce\n  zone: a\n",
            (3, 3),
            "unknown field `zone`, expected one of",
        );
        refused_at(
            "provider:\n  type: aws\n",
            (2, 9),
            "unknown variant `aws`, expected one of `local`, `vagrant`, `gce`",
        );
        let (line, _, message) = parse("provider:\n  type: gce\n  spot: yes-please\n").unwrap_err();
        assert_eq!(line, 3, "{message}");
        let (_, _, message) = parse("provider: {type: gce, type: gce}").unwrap_err();
        assert!(message.contains("duplicate field `type`"), "{message}");
    }

    #[test]
    fn vagrant_synced_folders_default_to_rsync_and_refuse_unknown_fields_where_they_are() {
        let p = parse(
            "provider:\n  type: vagrant\n  syncedFolders:\n    - {host: ./src, guest: /srv/src}\n    - {host: /data, guest: /data, type: nfs}\n",
        )
        .unwrap();
        let Provider::Vagrant(v) = p else {
            panic!("{p:?}")
        };
        assert_eq!(
            v.synced_folders,
            [
                SyncedFolder {
                    host: "./src".into(),
                    guest: "/srv/src".into(),
                    sync: FolderSync::Rsync
                },
                SyncedFolder {
                    host: "/data".into(),
                    guest: "/data".into(),
                    sync: FolderSync::Nfs
                }
            ]
        );
        refused_at(
            "provider:\n  type: vagrant\n  syncedFolders:\n    - host: a\n      guest: /a\n      type: smb\n",
            (6, 13),
            "unknown variant `smb`, expected `rsync` or `nfs`",
        );
        refused_at(
            "provider:\n  type: vagrant\n  syncedFolders:\n    - host: a\n      gust: /a\n",
            (5, 7),
            "unknown field `gust`",
        );
        refused_at(
            "provider:\n  type: gce\n  syncedFolders: []\n",
            (3, 3),
            "`syncedFolders` is not valid for provider type gce; only provider type vagrant accepts it",
        );
    }

    #[test]
    fn serializes_tagged_as_written() {
        let v = |p: &Provider| serde_json::to_value(p).unwrap();
        assert_eq!(v(&Provider::Local), serde_json::json!({"type": "local"}));
        assert_eq!(
            v(&Provider::Vagrant(VagrantProvider {
                box_name: Some("b".into()),
                ..Default::default()
            })),
            serde_json::json!({"type": "vagrant", "boxName": "b"})
        );
        assert_eq!(
            serde_json::to_value(ProviderKind::Gce).unwrap(),
            serde_json::json!("gce")
        );
        assert_eq!(ProviderKind::Vagrant.to_string(), "vagrant");
        // The tag of Provider and the name of its kind are the same string.
        for p in [
            Provider::Local,
            Provider::Vagrant(VagrantProvider::default()),
            Provider::Gce(GceProvider::default()),
        ] {
            assert_eq!(v(&p)["type"], p.kind().as_str());
            assert_eq!(serde_json::to_value(p.kind()).unwrap(), p.kind().as_str());
        }
    }

    #[test]
    fn provider_facts() {
        use ProviderKind::*;
        assert_eq!(
            Gce.default_disk_device("data", 0),
            "/dev/disk/by-id/google-data"
        );
        assert_eq!(Local.default_disk_device("data", 0), "/dev/vdb");
        assert_eq!(Vagrant.default_disk_device("logs", 1), "/dev/vdc");
        assert_eq!(Local.external_exposure(), ExposeType::ClusterIP);
        assert_eq!(Vagrant.external_exposure(), ExposeType::LoadBalancer);
        assert_eq!(Gce.external_exposure(), ExposeType::LoadBalancer);
        assert_eq!(Gce.machine_memory_mib("e2-medium"), Some(4096));
        assert_eq!(Local.machine_memory_mib("e2-micro"), Some(1024));
        assert_eq!(Gce.machine_memory_mib("z9-huge"), None);
    }
}
