//! `pangaea-ctl`: the controller side of Pangaea.
//!
//! Layers, bottom up: [`store`] (durable state, group commit) and [`pki`] (CAs and
//! issuance) know nothing of gRPC; [`tokens`], [`assign`] and [`controller`] hold the
//! cluster's rules; [`service`] exposes them to agents over mutual TLS and [`admin`] to the
//! operator's commands over a local socket; [`cli`] is the command line.

#![warn(missing_docs)]

pub mod admin;
pub mod agent_http;
pub mod assign;
pub mod certinfo;
pub mod cli;
pub mod cmd;
pub mod compile;
pub mod controller;
pub mod daemon;
pub mod etcd;
pub mod health;
pub mod issued;
pub mod mirror;
pub mod pki;
pub mod provider;
pub mod reconcile;
pub mod records;
pub mod rules;
pub mod service;
pub mod state_dir;
pub mod status;
pub mod store;
pub mod tokens;

pub use controller::{Controller, ControllerConfig, ControllerError, NodeView};
