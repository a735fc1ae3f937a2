//! The gRPC contract between `pangaea-ctl` and `pangaea-agent`.
//!
//! Generated at build time from `proto/pangaea.proto`; see that file for the meaning of each
//! message. Enrollment is the only service a client without a certificate may call.
//!
//! Rules that read a message the same way on every side live here, next to the generated
//! types, as methods: [`UnitState::is_settled`] and [`UnitState::not_started`] (module
//! [`unit_state`]), [`JournalRead::args`] (module [`journal`]).

#![warn(missing_docs)]

/// The generated messages, enums and services (documented in `proto/pangaea.proto`).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("pangaea.v1");
}

pub mod journal;
pub mod unit_state;

pub use unit_state::NotStarted;
pub use v1::*;

/// Largest message either side accepts. Assignments carry rendered files, not binaries
/// (those travel as artifacts), so a few MiB is generous; anything bigger is refused.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
