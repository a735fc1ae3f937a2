//! `pangaea-agent`: the on-node half of Pangaea.
//!
//! [`run()`] is the whole life of the agent; below it, [`identity`] (join, renew),
//! [`apply`] (atomic application of assignments through a [`service_manager`]),
//! [`artifact`] (verified installs), [`health`], and [`jobs`] (one-shot work such as
//! loading an image archive, running programs through a [`command`] runner). [`config`] is
//! the file cloud-init writes.
//!
//! The runtime has a single thread (the agent is mostly idle, and one thread keeps it
//! small); file I/O and `/proc` reads run on tokio's blocking pool so that it never stalls.

#![warn(missing_docs)]

pub mod apply;
pub mod artifact;
mod blocking;
pub mod command;
pub mod config;
pub mod health;
pub mod identity;
pub mod jobs;
pub mod metadata;
pub mod run;
pub mod service_manager;

pub use config::AgentConfig;
pub use run::{run, run_with};
