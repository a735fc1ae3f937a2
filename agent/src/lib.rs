//! `pangaea-agent`: the on-node half of Pangaea.
//!
//! [`run`] is the whole life of the agent; below it, [`identity`] (join, renew),
//! [`apply`] (atomic application of assignments through a [`service_manager`]),
//! [`artifact`] (verified installs), and [`health`]. [`config`] is the file
//! cloud-init writes.

pub mod apply;
pub mod artifact;
mod blocking;
pub mod config;
pub mod health;
pub mod identity;
pub mod run;
pub mod service_manager;

pub use config::AgentConfig;
pub use run::run;
