//! The `pangaea-ctl` command line.

use crate::cmd::{self, Ctx};
use crate::state_dir::{StateDir, find_cluster_dir};
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Pangaea: a cheap, highly available Kubernetes cluster with one command.
///
/// The controller keeps the cluster's PKI and state in `.pangaea/` beside `pangaea.yaml`
/// (found by walking up from the current directory). Nodes run `pangaea-agent`, which
/// joins with a single-use bootstrap token and then talks mutual TLS only.
#[derive(Parser)]
#[command(name = "pangaea-ctl", version, after_help = crate::exit::TABLE)]
pub struct Cli {
    /// The cluster's state directory [default: .pangaea beside the nearest pangaea.yaml,
    /// else ./.pangaea]
    #[arg(long, global = true, env = "PANGAEA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The cluster configuration [default: the nearest pangaea.yaml, else built-in
    /// defaults: 3 local nodes]
    #[arg(long, global = true, env = "PANGAEA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the local provider caches its node image (built once with debootstrap).
    #[arg(
        long,
        global = true,
        env = "PANGAEA_IMAGE_CACHE",
        default_value = "/var/cache/pangaea/images"
    )]
    pub image_cache: PathBuf,
    /// Log records on stderr (-v: info, -vv: debug) instead of the log file
    /// (/var/lib/pangaea/pangaea-ctl.log for root, ~/.local/state/pangaea otherwise).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress lines; the output, warnings and errors still show.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// `pangaea-ctl`'s commands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the controller: serve agents (mutual TLS) and operator commands (local socket).
    #[command(after_help = "Examples:\n  \
        pangaea-ctl serve --listen 10.213.0.1:7443 --advertise 10.213.0.1   # what `up` starts")]
    Serve {
        /// Address to listen on for agents.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// Names or IP addresses the agents use to reach this controller (repeatable);
        /// they go into its serving certificate.
        #[arg(long)]
        advertise: Vec<String>,
        /// Also serve the agent binary to booting nodes on this address (plain HTTP; nodes
        /// check its digest).
        #[arg(long)]
        agent_http: Option<SocketAddr>,
        /// Keep a reverse SSH tunnel to each of the provider's running nodes, through which
        /// they reach this controller (nodes that cannot dial this machine: GCE without
        /// advertiseAddress).
        #[arg(long)]
        tunnel: bool,
    },
    /// Bring the cluster up: create what is missing (PKI, controller daemon, node image,
    /// network, nodes), wait until every node is healthy, write the admin kubeconfig.
    /// Idempotent: on a healthy cluster it changes nothing. Local provider: needs root.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl up\n  \
        sudo pangaea-ctl up --timeout 10m --no-kubeconfig\n  \
        sudo pangaea-ctl up --artifact-source os-packages   # no internet: Debian's binaries")]
    Up {
        /// How long to wait for the nodes to become healthy.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        /// Where the cluster's binaries come from, recorded as `artifactSource:` in
        /// pangaea.yaml first (so every later command agrees): `pinned` (the upstream
        /// releases) or `os-packages` (this machine's installed Debian packages, for a
        /// machine that reaches only its package mirror).
        #[arg(long, value_name = "SOURCE", value_parser = ["pinned", "os-packages"])]
        artifact_source: Option<String>,
        /// Do not merge the admin kubeconfig into ~/.kube/config (or $KUBECONFIG's first
        /// file) as context pangaea-CLUSTER, nor make it the current context.
        #[arg(long)]
        no_kubeconfig: bool,
    },
    /// Reboot every node, one at a time (workers first, the etcd leader last), each time
    /// waiting until the node is healthy from its new boot and etcd has all its members
    /// and a leader again, so the cluster keeps serving.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl reboot\n  \
        sudo pangaea-ctl reboot --timeout 10m")]
    Reboot {
        /// How long to wait for each node.
        #[arg(long, default_value = "3m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Power every node off (workers first, etcd members last, the etcd leader last of
    /// all) and stop the controller daemon, keeping disks and state; `start` boots it
    /// again. The same as `down` without --purge.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl stop && sudo pangaea-ctl start")]
    Stop,
    /// Boot every node of the cluster that exists (all at once) and wait until all are
    /// healthy; nodes whose credentials expired while they were off get recovery tokens.
    /// Creates nothing (that is `up`).
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl start\n  \
        sudo pangaea-ctl start --timeout 10m")]
    Start {
        /// How long to wait for the nodes to become healthy.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Stop the nodes and the controller daemon; the cluster's state is kept unless --purge.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl down            # stop, keep disks and state\n  \
        sudo pangaea-ctl down --purge    # delete the cluster")]
    Down {
        /// Also delete the nodes, their network and the cluster's state (.pangaea).
        #[arg(long)]
        purge: bool,
    },
    /// Print shell settings for the cluster's tools: `eval "$(pangaea-ctl env)"` points
    /// kubectl, etcdctl (and gcloud or vagrant, by provider) at this cluster;
    /// `eval "$(pangaea-ctl env --unset)"` undoes it.
    #[command(after_help = "Examples:\n  \
        eval \"$(pangaea-ctl env)\"\n  \
        eval \"$(pangaea-ctl env etcdctl)\"; etcdctl endpoint health\n  \
        pangaea-ctl env --shell fish | source\n  \
        eval \"$(pangaea-ctl env --unset)\"")]
    Env {
        /// Which tool's settings (default: all that apply to this cluster).
        #[arg(value_enum, default_value = "all")]
        tool: EnvTool,
        /// The shell to print for (default: fish when $SHELL is fish, else bash/zsh syntax).
        #[arg(long, value_enum)]
        shell: Option<crate::cmd::env::Shell>,
        /// Print what unsets the variables instead.
        #[arg(long)]
        unset: bool,
    },
    /// Start a cluster directory: pangaea.yaml with every field and its default (the
    /// configuration reference, commented), templates/ with a README on overriding the
    /// built-in templates, and a .gitignore keeping .pangaea/ (keys, tokens, state) out of
    /// version control. Keeps what exists; creates no cluster.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl init my-cluster && cd my-cluster\n  \
        pangaea-ctl init --force      # pangaea.yaml back to the reference")]
    Init {
        /// The directory [default: the current one]; created if missing.
        dir: Option<PathBuf>,
        /// Replace an existing pangaea.yaml with the reference.
        #[arg(long)]
        force: bool,
    },
    /// Open a shell on a node, or run a command there (after `--`): inside a local node
    /// (as a unit of its systemd, with the node's capabilities and cgroup), or `gcloud
    /// compute ssh` to a GCE instance. The exit status is the command's.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl ssh node-1\n  \
        sudo pangaea-ctl ssh node-2 -- journalctl -u etcd --since -10min\n  \
        sudo pangaea-ctl ssh node-3 -- ctr -n k8s.io images ls")]
    Ssh {
        /// The node.
        node: pangaea_core::NodeName,
        /// The command and its arguments [default: a login shell].
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// A node's journal (one unit, or all of this boot), read on the node by its agent and
    /// streamed over its mutual-TLS channel (through the provider's shell when the agent is
    /// not connected); or with --bundle, one archive for a bug report: status, every node's
    /// journal of the Pangaea units, the controller's log, pangaea.yaml, with token secrets
    /// redacted. `up` writes a bundle by itself when it fails.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl logs node-1 etcd\n  \
        sudo pangaea-ctl logs node-2 pangaea-agent --since -1h\n  \
        sudo pangaea-ctl logs node-3 kubelet -f\n  \
        sudo pangaea-ctl logs --bundle bug-report.tar.gz")]
    Logs {
        /// The node.
        #[arg(required_unless_present = "bundle")]
        node: Option<pangaea_core::NodeName>,
        /// The unit (`etcd`, `pangaea-agent`, `kubelet`, …) [default: the whole journal of
        /// this boot].
        unit: Option<String>,
        /// Keep printing new entries.
        #[arg(short, long)]
        follow: bool,
        /// From this time on (journalctl's forms: `-1h`, `2026-11-22 10:00`, `today`)
        /// [default: the last 200 entries].
        #[arg(long, allow_hyphen_values = true)]
        since: Option<String>,
        /// Write the bug-report archive (.tar.gz) here instead.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["node", "unit", "follow", "since"])]
        bundle: Option<PathBuf>,
    },
    /// Show what `up` would change, changing nothing: nodes it would create, nodes the
    /// controller knows that pangaea.yaml no longer names, and per node each file whose
    /// rendered content differs from what the node has now, as a unified diff (files with
    /// keys are named, never shown), plus changed artifacts and units.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl plan                 # after editing pangaea.yaml or a template\n  \
        pangaea-ctl plan -o json | jq '.nodes[].files[].path'")]
    Plan {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Check what this host needs for the configured cluster (its provider's tools, root,
    /// free disk and memory for the nodes, inotify limits, the OS packages an offline
    /// cluster takes its binaries from), with the version found and the exact fix for each.
    /// Exits 5 when something `up` cannot do without is missing.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl doctor\n  \
        sudo pangaea-ctl doctor --install     # apt-get install what is missing\n  \
        pangaea-ctl doctor -o json | jq '.[] | select(.outcome != \"ok\")'")]
    Doctor {
        /// Install what is missing with the system package manager (apt-get), then check
        /// again.
        #[arg(long)]
        install: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List the clusters of this host, wherever their directories are: name, provider,
    /// nodes, node network, state (running, stopped, or gone when its .pangaea was deleted
    /// by hand) and directory. `up` records a cluster; `down --purge` forgets it.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl clusters\n  \
        pangaea-ctl clusters -o json | jq -r '.[] | select(.state == \"running\") | .directory'")]
    Clusters {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print the cluster's admin kubeconfig, or merge it into your kubectl configuration
    /// (the first file of $KUBECONFIG, else ~/.kube/config; under sudo, the invoking
    /// user's) as cluster, user and context `pangaea-CLUSTER`, keeping every other entry.
    /// `up` merges it already; `down --purge` removes exactly these entries.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl kubeconfig > admin.kubeconfig\n  \
        pangaea-ctl kubeconfig --merge            # add or refresh context pangaea-CLUSTER\n  \
        pangaea-ctl kubeconfig --switch           # ... and make it kubectl's current context\n  \
        pangaea-ctl kubeconfig --merge --file ~/.kube/lab.yaml\n  \
        pangaea-ctl kubeconfig --external > team.kubeconfig   # GCE: the API's static address")]
    Kubeconfig {
        /// Merge into your kubectl configuration instead of printing.
        #[arg(long)]
        merge: bool,
        /// Merge, and make the cluster's context the current one.
        #[arg(long)]
        switch: bool,
        /// The file to merge into [default: first of $KUBECONFIG, else ~/.kube/config].
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Reach the API at its external address (GCE's static address) instead of through
        /// this machine's load balancer: for kubectl elsewhere.
        #[arg(long)]
        external: bool,
    },
    /// Inspect the cluster's certificate authorities.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Create, list and revoke bootstrap tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show the nodes, their assignment revisions and latest health reports.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl status\n  \
        pangaea-ctl status -o json | jq -r '.[] | select(.state != \"healthy\") | .name'")]
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Render every file the nodes get from pangaea.yaml and the templates (deterministic:
    /// the same input gives byte-identical output).
    #[command(after_help = "Examples:\n  \
        pangaea-ctl compile                       # every node's files into compiled/\n  \
        pangaea-ctl compile --node node-2 --out /tmp/n2\n  \
        pangaea-ctl compile -i units/etcd.service --node node-2\n  \
        pangaea-ctl compile --watch")]
    Compile {
        /// Only this node [default: all].
        #[arg(long)]
        node: Option<String>,
        /// Directory to write into, one subdirectory per node.
        #[arg(long, default_value = "compiled")]
        out: PathBuf,
        /// Render one template instead: a built-in name (like units/etcd.service) or a
        /// template file; as --node (default: the first node) sees it.
        #[arg(short = 'i', long = "template")]
        template: Option<String>,
        /// Where -i writes [default: standard output]. (`-o` means an output format in
        /// every command, so this one has no short form.)
        #[arg(long = "out-file", value_name = "FILE", requires = "template")]
        output: Option<PathBuf>,
        /// Keep running and re-render whenever the configuration or a template changes.
        #[arg(long)]
        watch: bool,
    },
    /// The verified artifact mirror in .pangaea/artifacts (what nodes download).
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
    /// Container images in the nodes' containerd (no registry needed).
    #[command(subcommand)]
    Image(ImageCommand),
    /// The cluster's etcd: snapshots for disaster recovery.
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// Write an encrypted backup of the cluster's .pangaea/ (CA keys, secrets, state) to
    /// FILE: an age file encrypted to a passphrase (`age -d FILE` decrypts it too). Keep it
    /// off this machine. The artifact mirror and node disks are not in it.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl backup cluster.age --passphrase-file -   # passphrase on stdin\n  \
        age -d cluster.age | tar -t                          # what is in it")]
    Backup {
        /// Where to write the backup (replaced once complete).
        file: PathBuf,
        /// A file whose first line is the passphrase (`-`: standard input); else
        /// $PANGAEA_BACKUP_PASSPHRASE. At least 12 characters.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Restore .pangaea/ from a backup written by `pangaea-ctl backup`. An existing
    /// .pangaea/ with a cluster in it is refused unless --force, and then kept aside.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl restore cluster.age --passphrase-file pass.txt\n  \
        pangaea-ctl restore cluster.age --force   # keep the current .pangaea aside")]
    Restore {
        /// The backup.
        file: PathBuf,
        /// As for `backup`.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Replace an existing cluster directory (kept aside as .pangaea.before-restore-TIME).
        #[arg(long)]
        force: bool,
    },
    /// Print the completion script for a shell.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl completion bash > /etc/bash_completion.d/pangaea-ctl\n  \
        pangaea-ctl completion zsh > \"${fpath[1]}/_pangaea-ctl\"\n  \
        pangaea-ctl completion fish > ~/.config/fish/completions/pangaea-ctl.fish")]
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Estimate what the configured cluster costs a month on Google Compute Engine (machines,
    /// disks, addresses, Spot, the free tier), beside a managed single-node cluster, from a
    /// dated price table. On the local and Vagrant providers nothing is billed: the estimate
    /// is what the same cluster would cost on GCE.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl cost\n  \
        pangaea-ctl cost -o json\n  \
        pangaea-ctl cost --prices my-prices.yaml   # a copy of controller/prices/gce.yaml, edited")]
    Cost {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// A price table to use instead of the built-in one (same format).
        #[arg(long)]
        prices: Option<PathBuf>,
    },
    /// Failure drills: prove the cluster's high availability on demand.
    #[command(subcommand)]
    Drill(DrillCommand),
}

/// `pangaea-ctl drill` subcommands.
#[derive(Subcommand)]
pub enum DrillCommand {
    /// Crash one node (a power cut, not a clean shutdown) while writing to etcd through the
    /// others; report how long writes were unavailable (target: etcd's election timeout
    /// plus 1 s), boot it again and report when it is healthy. Needs at least 3 etcd
    /// members running, all of them.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl drill node-loss            # the etcd leader\n  \
        sudo pangaea-ctl drill node-loss node-3 -o json")]
    NodeLoss {
        /// The node to crash [default: the etcd leader, whose loss needs an election].
        node: Option<pangaea_core::NodeName>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// `pangaea-ctl etcd` subcommands.
#[derive(Subcommand)]
pub enum EtcdCommand {
    /// Snapshots of etcd's data.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `pangaea-ctl etcd snapshot` subcommands.
#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Save a snapshot of etcd's data to FILE (0600; it holds the cluster's secrets),
    /// asked of the leader (or any running member), its SHA-256 trailer checked before it
    /// replaces FILE. `etcdctl snapshot status FILE` reads it.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl etcd snapshot save etcd-$(date +%F).db\n  \
        etcdctl snapshot status etcd-2026-11-22.db")]
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
    },
    /// Rebuild etcd from a snapshot when its quorum is lost for good (two of three etcd
    /// nodes destroyed): the snapshot is restored (with etcd's etcdutl or etcdctl on this
    /// machine, as a new cluster) onto one surviving etcd node, whose old data is kept
    /// beside; the other etcd nodes' machines are deleted and created again, joining it
    /// as learners. Refused while etcd still has a leader, unless --force.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl etcd snapshot restore etcd-2026-11-22.db\n  \
        sudo pangaea-ctl etcd snapshot restore etcd.db --node node-1 --force")]
    Restore {
        /// The snapshot (`pangaea-ctl etcd snapshot save` writes one).
        file: PathBuf,
        /// The surviving etcd node to restore onto (default: the first whose machine runs).
        #[arg(long)]
        node: Option<pangaea_core::NodeName>,
        /// Restore even though etcd still has a leader (its data is replaced).
        #[arg(long)]
        force: bool,
        /// How long the restore, and each re-created node, may take.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// `pangaea-ctl image` subcommands.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Load an image archive into the containerd of every node (or the named ones)
    ///
    /// The archive is a tar of one or more images in OCI or docker format, as written by
    /// `docker save -o app.tar app:1`, `podman save -o app.tar app:1`,
    /// `ctr images export app.tar docker.io/library/app:1` or
    /// `skopeo copy docker://app:1 docker-archive:app.tar:app:1`. Pods then use the image
    /// by the name inside the archive with `imagePullPolicy: IfNotPresent` or `Never`, and
    /// no registry is involved (a `:latest` tag defaults to `Always`, which asks one).
    ///
    /// How: the archive is copied into the controller's mirror (its SHA-256 computed once);
    /// the running controller hands each node a job; each node's agent fetches the archive
    /// over mutual TLS, checks its digest, and imports it with
    /// `ctr -n k8s.io images import` into the namespace the kubelet uses.
    ///
    /// Prints each node's progress, then one line per node. Exits non-zero if any node
    /// failed, naming the node and what containerd said (a damaged archive is refused by
    /// every node). Loading the same archive again is harmless: containerd keeps one copy.
    /// Needs the controller running (`pangaea-ctl up`).
    #[command(verbatim_doc_comment)]
    #[command(after_help = "Examples:\n  \
        docker save -o app.tar registry.example/app:1.2\n  \
        pangaea-ctl image load app.tar                     # every node\n  \
        pangaea-ctl image load app.tar --node wk-1 --node wk-2\n  \
        pangaea-ctl image load big.tar --timeout 30m\n  \
        pangaea-ctl image load app.tar -o json | jq '.nodes[] | select(.loaded | not)'")]
    Load {
        /// The image archive (tar, OCI or docker format).
        archive: PathBuf,
        /// Load only into this node (repeatable) [default: every node].
        #[arg(long = "node", value_name = "NODE")]
        nodes: Vec<pangaea_core::NodeName>,
        /// How long to wait for every node; a node still busy then is reported failed.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
        /// Output format of the outcome (progress goes to stderr).
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// `pangaea-ctl artifacts` subcommands.
#[derive(Subcommand)]
pub enum ArtifactsCommand {
    /// Show the pinned artifact set and what the mirror holds, with sizes and digests.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl artifacts list")]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Copy a local file into the mirror (air-gapped use); it then serves any pin of its
    /// SHA-256 or SHA-512.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl artifacts import ./etcd-v3.5.27-linux-amd64.tar.gz   # carried in on a USB stick")]
    Import {
        /// The file to import.
        file: PathBuf,
    },
    /// Fetch artifacts of the pinned set into the mirror (all, or the names given), each
    /// verified against its pinned digest; already mirrored ones are skipped.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl artifacts fetch            # everything pinned, before going offline\n  \
        pangaea-ctl artifacts fetch etcd containerd")]
    Fetch {
        /// Names of the artifacts to fetch, as `artifacts list` shows them [default: all].
        names: Vec<String>,
        /// YAML list of overrides by name (url, digest, version, members), e.g. a local
        /// source for an artifact.
        #[arg(long)]
        overrides: Option<PathBuf>,
    },
}

/// `pangaea-ctl pki` subcommands.
#[derive(Subcommand)]
pub enum PkiCommand {
    /// List each CA and the controller certificate with subject, SANs and expiry.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl pki show\n  \
        pangaea-ctl pki show -o json")]
    Show {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print the controller CA pin (`sha256:...`) that agents are configured with.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl pki pin   # sha256:... for an agent's configuration")]
    Pin,
}

/// `pangaea-ctl token` subcommands.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it (the only time its secret is shown).
    #[command(after_help = "Examples:\n  \
        pangaea-ctl token create --node node-4 --ttl 30m\n  \
        pangaea-ctl token create --uses 3 --description 'lab machines'")]
    Create {
        /// Lifetime, e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many joins it admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Admit only a node of this name (and let it replace an old node of that name).
        #[arg(long)]
        node: Option<pangaea_core::NodeName>,
        /// A note kept with the token, shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids only; secrets are not stored).
    #[command(after_help = "Examples:\n  \
        pangaea-ctl token list")]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke a token by id.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl token revoke 4f2a9c")]
    Revoke {
        /// The token's id: the part before the dot, as `token list` shows it.
        id: String,
    },
}

/// `pangaea-ctl node` subcommands.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Add nodes to a pool: its `count` in pangaea.yaml goes up (comments kept), then `up`
    /// creates them. A new etcd node joins the running etcd cluster as a learner and is
    /// promoted to a voting member once caught up, one node at a time. Interrupted, `up`
    /// completes it.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl node add                 # one more node in the first pool\n  \
        sudo pangaea-ctl node add --pool worker --count 2")]
    Add {
        /// The pool (needed when pangaea.yaml has more than one).
        #[arg(long)]
        pool: Option<String>,
        /// How many nodes to add.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        count: u32,
        /// How long to wait for each new node to be healthy (and its etcd member caught up).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Drain a node: cordon it and evict its pods through the Kubernetes eviction API (as
    /// `kubectl drain --ignore-daemonsets`: DaemonSet and mirror pods stay; a pod a
    /// PodDisruptionBudget protects is tried again until --timeout), then stop its kubelet.
    /// Where no Kubernetes API answers, only the kubelet is stopped, and the output says so.
    /// `node uncordon` undoes it.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl node drain node-2\n  \
        pangaea-ctl node drain node-2 --timeout 10m --delete-emptydir-data")]
    Drain {
        /// The node's name, as `status` shows it.
        name: pangaea_core::NodeName,
        /// How far the drain may go.
        #[command(flatten)]
        drain: DrainArgs,
        /// The kubeconfig of the API (default: the cluster's .pangaea/admin.kubeconfig).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Undo `node drain`: start the node's kubelet again, then mark it schedulable.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl node uncordon node-2")]
    Uncordon {
        /// The node's name, as `status` shows it.
        name: pangaea_core::NodeName,
        /// The kubeconfig of the API (default: the cluster's .pangaea/admin.kubeconfig).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Remove a node for good: drained (see `node drain`; --force also deletes pods no
    /// controller re-creates), its etcd member (by ID, only when the cluster can take it),
    /// every credential (refused at once by the controller and by etcd), its instance, and
    /// — in pangaea.yaml's `removedNodes` — its place in the configuration. Interrupted, the
    /// same command resumes where it stopped.
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl node remove node-3 --dry-run   # what it would do\n  \
        sudo pangaea-ctl node remove node-3 --dry-run -o json\n  \
        sudo pangaea-ctl node remove node-3\n  \
        sudo pangaea-ctl node remove node-3 --force     # its machine is gone")]
    Remove {
        /// The node's name, as `status` shows it.
        name: pangaea_core::NodeName,
        /// Remove it even if the etcd members left would be an even number or lose quorum.
        #[arg(long)]
        force: bool,
        /// Print the steps (and whether etcd would allow the removal now); change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format of --dry-run.
        #[arg(short, long, value_enum, default_value = "table", requires = "dry_run")]
        output: Output,
        /// How long the drain (the first step) may take.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print the cloud-init user-data a node was created with, as its provider keeps it,
    /// with the secret of its bootstrap token redacted.
    #[command(after_help = "Examples:\n  \
        pangaea-ctl node user-data node-2")]
    UserData {
        /// The node's name, as `status` shows it.
        name: pangaea_core::NodeName,
    },
    /// Shut a node down cleanly and boot it again with the same disk; waits until it
    /// reports healthy from its new boot (a new boot ID).
    #[command(after_help = "Examples:\n  \
        sudo pangaea-ctl node reboot node-2")]
    Reboot {
        /// The node's name, as `status` shows it.
        name: pangaea_core::NodeName,
        /// How long to wait for it to be healthy again.
        #[arg(long, default_value = "3m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// How far a drain may go (`node drain`, and `node remove`'s first step).
#[derive(Args, Clone, Copy, Debug)]
pub struct DrainArgs {
    /// How long evictions (retried while a PodDisruptionBudget refuses them) and the pods'
    /// termination may take.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Also delete pods no controller re-creates (and DaemonSet pods whose DaemonSet is gone).
    #[arg(long)]
    pub force: bool,
    /// Also evict pods with emptyDir volumes; their data is lost.
    #[arg(long)]
    pub delete_emptydir_data: bool,
}

impl DrainArgs {
    /// The drain's options.
    pub fn options(self) -> crate::drain::Options {
        crate::drain::Options {
            timeout: self.timeout,
            force: self.force,
            delete_emptydir_data: self.delete_emptydir_data,
        }
    }
}

/// A tool `pangaea-ctl env` prints shell settings for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EnvTool {
    /// Every tool below that applies to this cluster's provider.
    All,
    /// KUBECONFIG: the admin kubeconfig `up` writes.
    Kubectl,
    /// ETCDCTL_* for the cluster's etcd, with an operator client certificate.
    Etcdctl,
    /// CLOUDSDK_CORE_PROJECT, CLOUDSDK_COMPUTE_REGION and CLOUDSDK_COMPUTE_ZONE (the first
    /// zone) of a GCE cluster.
    Gcloud,
    /// VAGRANT_CWD: the directory of a Vagrant cluster's Vagrantfile.
    Vagrant,
    /// What the provider's own SSH needs (`vagrant ssh NODE`, `gcloud compute ssh NODE`);
    /// local nodes have no SSH server (`pangaea-ctl ssh NODE` opens a shell on any node).
    Ssh,
    /// PANGAEA_NFS_SERVER, PANGAEA_NFS_EXPORT and PANGAEA_NFS_MOUNT of the cluster's first
    /// `nfs` entry (with a suffix _2, _3, … for the others).
    Nfs,
    /// Refused, with the way: nodes run containerd, not Docker (there is no Docker daemon
    /// for DOCKER_HOST); `pangaea-ctl image load` puts images into them.
    Docker,
}

/// How `status` and `pki show` print.
#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    /// Aligned columns, for reading.
    Table,
    /// Pretty-printed JSON, for scripts (field names are stable).
    Json,
    /// YAML, the same fields as JSON.
    Yaml,
}

/// Parses `90s`, `30m`, `1h`, `2d` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use a number with s, m, h or d, like 30m"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    let secs = n
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("duration {s:?} is too long"))?;
    if secs == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Whether the command creates the cluster's state directory before it runs. Not those
/// that only read the configuration, and not `up`, which creates it once its checks pass
/// (Compilation::load does), so an `up` refused for a missing artifact leaves no trace.
fn creates_state_dir(c: &Command) -> bool {
    !matches!(
        c,
        Command::Up { .. }
            | Command::Doctor { .. }
            | Command::Cost { .. }
            | Command::Kubeconfig { .. }
            | Command::Plan { .. }
    )
}

/// Runs the command line: each command lives in its own module under [`crate::cmd`].
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Needs no cluster: nothing is looked for or created.
    match cli.command {
        Command::Completion { shell } => return cmd::completion::run(shell),
        Command::Clusters { output } => return cmd::clusters::run(output).await,
        Command::Init { dir, force } => return cmd::init::run(dir, force),
        _ => {}
    }
    let cwd = std::env::current_dir().context("current directory")?;
    let ctx = Ctx {
        state: cli
            .state_dir
            .map(StateDir::new)
            .unwrap_or_else(|| StateDir::find(&cwd)),
        config: cli
            .config
            .unwrap_or_else(|| find_cluster_dir(&cwd).join("pangaea.yaml")),
        image_cache: cli.image_cache,
    };
    if creates_state_dir(&cli.command) {
        ctx.state
            .ensure()
            .with_context(|| format!("create {}", ctx.state.path().display()))?;
    }
    match cli.command {
        Command::Serve {
            listen,
            advertise,
            agent_http,
            tunnel,
        } => cmd::serve::run(&ctx, listen, advertise, agent_http, tunnel).await,
        Command::Completion { shell } => cmd::completion::run(shell),
        Command::Clusters { output } => cmd::clusters::run(output).await,
        Command::Init { dir, force } => cmd::init::run(dir, force),
        Command::Doctor { install, output } => cmd::doctor::run(&ctx, install, output),
        Command::Plan { output } => cmd::plan::run(&ctx, output).await,
        Command::Ssh { node, command } => cmd::ssh::run(&ctx, node, command).await,
        Command::Logs {
            bundle: Some(file), ..
        } => cmd::logs::bundle(&ctx, &file).await,
        Command::Logs {
            node,
            unit,
            follow,
            since,
            bundle: None,
        } => {
            let node = node.context("which node? (`pangaea-ctl logs NODE [UNIT]`)")?;
            cmd::logs::node(&ctx, node, unit, follow, since).await
        }
        Command::Up {
            timeout,
            no_kubeconfig,
            artifact_source,
        } => {
            if let Some(source) = artifact_source {
                cmd::up::record_artifact_source(&ctx, &source)?;
            }
            if let Err(e) = cmd::up::run(&ctx, timeout, cmd::up::Mode::Up).await {
                // What went wrong, collected while it is still there (not for a refusal,
                // which changed nothing).
                if crate::exit::code_of(&e) != crate::exit::Exit::Refused {
                    crate::progress::settle();
                    cmd::logs::after_failed_up(&ctx).await;
                }
                return Err(e);
            }
            if no_kubeconfig {
                return Ok(());
            }
            cmd::kubeconfig::merge_after_up(&ctx)
        }
        Command::Start { timeout } => cmd::up::run(&ctx, timeout, cmd::up::Mode::Start).await,
        Command::Kubeconfig {
            merge,
            switch,
            file,
            external,
        } => cmd::kubeconfig::run(&ctx, merge || switch, switch, external, file),
        Command::Stop => cmd::down::run(&ctx, false).await,
        Command::Reboot { timeout } => cmd::node::reboot_all(&ctx, timeout).await,
        Command::Backup {
            file,
            passphrase_file,
        } => cmd::backup::backup(&ctx, &file, passphrase_file.as_deref()).await,
        Command::Restore {
            file,
            passphrase_file,
            force,
        } => cmd::backup::restore(&ctx, &file, passphrase_file.as_deref(), force).await,
        Command::Down { purge } => cmd::down::run(&ctx, purge).await,
        Command::Env { tool, shell, unset } => cmd::env::run(&ctx, tool, shell, unset),
        Command::Compile {
            node,
            out,
            template,
            output,
            watch,
        } => {
            let args = cmd::compile::Args {
                node,
                out,
                template,
                output,
                watch,
            };
            cmd::compile::run(&ctx, args).await
        }
        Command::Pki(c) => cmd::pki::run(&ctx, c),
        Command::Token(c) => cmd::token::run(&ctx, c).await,
        Command::Status { output } => cmd::status::run(&ctx, output).await,
        Command::Cost { output, prices } => cmd::cost::run(&ctx, output, prices.as_deref()),
        Command::Drill(DrillCommand::NodeLoss { node, output }) => {
            cmd::drill::node_loss(&ctx, node, output).await
        }
        Command::Artifacts(c) => cmd::artifacts::run(&ctx, c).await,
        Command::Etcd(EtcdCommand::Snapshot(SnapshotCommand::Save { file })) => {
            cmd::etcd::snapshot_save(&ctx, &file).await
        }
        Command::Etcd(EtcdCommand::Snapshot(SnapshotCommand::Restore {
            file,
            node,
            force,
            timeout,
        })) => cmd::etcd::snapshot_restore(&ctx, &file, node, force, timeout).await,
        Command::Node(c) => cmd::node::run(&ctx, c).await,
        Command::Image(ImageCommand::Load {
            archive,
            nodes,
            timeout,
            output,
        }) => {
            let args = cmd::image::Args {
                archive,
                nodes: nodes.iter().map(ToString::to_string).collect(),
                timeout,
            };
            cmd::image::run(&ctx, args, output).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
        // Hardening #12: an overflowing duration is refused, not wrapped.
        assert!(parse_duration("999999999999999999d").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

#[cfg(test)]
mod help_tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every command a user runs, with an example in its `--help`.
    #[test]
    fn every_command_shows_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            let leaf = cmd.get_subcommands().next().is_none();
            let hidden = cmd.is_hide_set();
            let has = cmd
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("Examples:"));
            if leaf && !hidden && !has {
                missing.push(path.clone());
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example in --help of: {missing:#?}");
    }
}
