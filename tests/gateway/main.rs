//! The integration suite as one test binary, one module per area. Each area was a binary
//! of its own that linked the whole crate; one binary links it once. Kept apart, in
//! `tests/`: `architecture.rs` and `docs.rs` (checks of the source tree and the docs) and
//! `fuzz.rs` (the proptest targets, run at CI depth). Shared helpers: `tests/support/`.

#[path = "../support/mod.rs"]
mod support;

mod abuse;
mod admin;
mod api_key;
mod attacks;
mod authz;
mod basic;
mod check;
mod cli;
mod egress;
mod forward_auth;
mod grpc;
mod interop;
mod issuers;
mod log_injection;
mod mtls;
mod oauth;
mod paths;
mod per_core;
mod policy;
mod proxy;
mod rate;
mod redis_ha;
mod reload;
mod server;
mod shared;
mod tls;
mod tracing;
mod url_key;
mod websocket;
