//! Portcullis: an authentication gateway that runs as a sidecar in front of integration
//! services.
//!
//! ```text
//!            TLS (rustls)              the inbound pipeline (gateway.rs)
//! client ──> server::listener ──> check path ─> route ─> strip X-Portcullis-*
//!            limits, timeouts      ─> lockout ─> auth (Principal) ─> authz (Permit)
//!                                  ─> rewrite headers ─> upstream (streamed) ─> finish
//! ```
//!
//! Modules:
//! - [`cli`]: the contract's subcommands; `main.rs` only calls [`cli::run`].
//! - [`config`]: TOML to a checked [`config::Config`], every error with its position.
//! - [`server`]: binding, TLS, connection limits, shutdown.
//! - [`gateway`]: the inbound pipeline, one function top to bottom; [`route`] its paths.
//! - [`auth`]: one module per method, the lockout; [`authz`]: access AND senders.
//! - [`headers`], [`assertion`]: header edits, the signed principal assertion.
//! - [`upstream`]: pooled client, builtin echo, body limits. [`error`]: the JSON refusals.
//! - [`egress`]: the egress listener, signing local services' outbound calls.
//! - [`admin`], [`metrics`]: health, readiness, Prometheus.

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
pub mod metrics;
pub mod reload;
pub mod route;
pub mod server;
pub mod upstream;
