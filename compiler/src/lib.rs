//! The compiler: from `pangaea.yaml` and the cluster's secrets to every file each node
//! needs, through handlebars templates.
//!
//! No I/O beyond reading the configuration (and [`config_edit`] recording a removed node in
//! it), template overrides and files the configuration names: certificates and keys come in through [`inputs::Inputs`], so rendering is
//! deterministic (the same input gives byte-identical output) and testable.

#![warn(missing_docs)]

pub mod artifact_set;
pub mod budget;
pub mod cidr;
pub mod cloudinit;
pub mod config;
pub mod config_edit;
pub mod containerd;
pub mod expose;
pub mod helpers;
pub mod inputs;
pub mod locate;
pub mod model;
pub mod node;
pub mod provider;
pub mod reference;
pub mod roles;
pub mod templates;
pub mod vagrantfile;
