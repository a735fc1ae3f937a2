//! `pangaea-ctl`: the controller side of Pangaea.
//!
//! Layers, bottom up:
//! * [`state_dir`] names every path of `.pangaea/`; [`store`] (durable state, group
//!   commit), [`records`] and [`pki`] (CAs and issuance) know nothing of gRPC;
//! * [`tokens`], [`assign`], [`rules`] (join, authenticate, renew, report) and [`health`]
//!   (when a node is healthy) hold the cluster's rules; [`jobs`] hands agents one-shot work
//!   ([`image`]: loading an image archive); [`controller`] opens them together;
//! * [`service`] exposes the rules to agents over mutual TLS, [`admin`] to the operator's
//!   commands over a local socket;
//! * [`provider`] creates the machines, [`reconcile`] drives them to the configuration;
//! * [`cli`] parses the command line and [`cmd`] holds one module per command.
//!
//! `docs/ARCHITECTURE.md` has the module map and says where a new provider or command goes.

#![warn(missing_docs)]

/// `println!` for a command's output: a reader that went away ends the command quietly
/// ([`cmd::write_out`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cmd::write_out(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cmd::write_out(format_args!($($arg)*), true)
    };
}

/// `print!` for a command's output ([`cmd::write_out`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cmd::write_out(format_args!($($arg)*), false)
    };
}

/// Prints a line on stderr (a warning, a table beside the output) through
/// [`progress::note`], above any spinner.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::progress::note(format_args!($($arg)*))
    };
}

pub mod admin;
pub mod agent_http;
pub mod api_address;
pub mod assign;
pub mod backup;
pub mod certinfo;
pub mod cli;
pub mod cmd;
pub mod compile;
pub mod controller;
pub mod cost;
pub mod daemon;
pub mod doctor;
pub mod drain;
pub mod drill;
pub mod etcd;
pub mod etcd_join;
pub mod exit;
pub mod fdlimit;
pub mod health;
pub mod host_state;
pub mod image;
pub mod issued;
pub mod jobs;
pub mod journal;
pub mod kubeconfig;
pub mod membership;
pub mod mirror;
pub mod os_packages;
pub mod pki;
pub mod preflight;
pub mod progress;
pub mod provider;
pub mod reconcile;
pub mod records;
pub mod registry;
pub mod removal;
pub mod revocation;
pub mod rules;
pub mod service;
pub mod state_dir;
pub mod status;
pub mod store;
pub mod stream_body;
pub mod tokens;
pub mod troubleshooting;
pub mod tunnel;

pub use controller::{Controller, ControllerConfig, ControllerError, NodeView};
