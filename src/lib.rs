//! Portcullis: an authentication gateway that runs as a sidecar in front of integration
//! services.
//!
//! A request's phases, from check head to finish, are charted once, in [`inbound`].
//!
//! The modules form layers and imports only point down; `ARCHITECTURE.md` has the table
//! and `tests/architecture.rs` enforces it.

pub mod admin;
pub mod assertion;
pub mod auth;
pub mod authz;
pub mod cli;
pub mod config;
pub mod egress;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod inbound;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod reload;
pub mod route;
pub mod run;
pub mod server;
pub mod shared;
pub mod state;
pub mod telemetry;
pub mod upstream;
pub mod util;
