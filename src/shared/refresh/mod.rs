//! [`RefreshFamilies`]: the builtin issuer's refresh tokens, stored only by a hash, in
//! families: each use rotates a token (the next one stored in the same atomic step),
//! presenting a used one again revokes its family, and a family ends at a fixed time
//! however often it is rotated. In memory, a bounded cache of tokens and a [`Table`] of
//! revoked families; in Redis, signed records under keyed names, changed by scripts.
//!
//! `memory.rs` and `redis.rs` implement [`RefreshFamilies`] side by side.

mod memory;
mod redis;

use std::time::Duration;

use super::revocation::{Kept, Revocation, RevocationLimits};
use super::{Pending, Unavailable};

pub use memory::MemoryRefresh;

/// A refresh token to store: its family (new, or continued by a rotation), its client,
/// when it expires (unix seconds), what it grants, and how long Redis keeps it.
pub struct NewRefresh<'a> {
    pub token: &'a str,
    pub family: &'a str,
    pub family_ends_at: u64,
    pub new_family: bool,
    pub client: &'a str,
    pub expires_at: u64,
    pub grant: &'a str,
    pub ttl: Duration,
}

/// Storing a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    Stored,
    /// The family is gone (revoked meanwhile, or ended): no token was stored.
    FamilyGone,
    /// The family's stored value failed its integrity check: no token was stored.
    FamilyForged,
}

/// What taking a refresh token did, atomically, in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The token was active and is now used: its grant (`fields` as stored) and family.
    Granted {
        family: String,
        fields: String,
        family_ends_at: u64,
    },
    Unknown,
    Expired,
    /// Issued to another client: refused, and not marked used.
    OtherClient,
    Revoked,
    /// The token had been used already: its family is now revoked everywhere.
    Reused,
    /// The token had been used already, and its family could not be revoked: the
    /// memory table of revoked families is full (counted, logged).
    ReusedUnrevoked,
    /// The stored grant (or its family's value) failed its integrity check: refused,
    /// counted, nothing changed.
    Forged,
}

/// What a refresh token names, read without taking it (for revocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    Found {
        family: String,
        family_ends_at: u64,
        client: String,
    },
    Unknown,
    /// The stored grant failed its integrity check (counted): it can never be used.
    Forged,
}

/// A rotation: take `token` for `client` at `now`, storing `next` (same grant, living
/// `ttl_secs`, never past the family's end) when it is granted.
#[derive(Debug, Clone, Copy)]
pub struct Rotation<'a> {
    pub token: &'a str,
    pub client: &'a str,
    pub now: u64,
    pub next: &'a str,
    pub ttl_secs: u64,
    /// Bounds of the table of revoked families (a reuse revokes one).
    pub limits: RevocationLimits,
}

/// Refresh tokens and their families.
pub trait RefreshFamilies: Send + Sync {
    /// Stores a new refresh token (by its hash) with its grant, in its family (created
    /// when `new_family`).
    fn issue<'a>(&'a self, r: NewRefresh<'a>) -> Pending<'a, Result<Issued, Unavailable>>;
    /// Rotates a token, atomically: of two takers of one token, exactly one is granted
    /// (and its `next` stored), the other finds a reuse, which revokes the family.
    fn take<'a>(&'a self, r: Rotation<'a>) -> Pending<'a, Result<Taken, Unavailable>>;
    /// What a token names, without taking it (for revocation).
    fn peek<'a>(&'a self, token: &'a str) -> Pending<'a, Result<Peeked, Unavailable>>;
    /// Deletes what is stored under a token (a forged record, on revocation).
    fn forget<'a>(&'a self, token: &'a str) -> Pending<'a, Result<(), Unavailable>>;
    /// Revokes every token of the family `r.key` (issued to `r.client`).
    fn revoke_family<'a>(&'a self, r: Revocation<'a>) -> Pending<'a, Kept>;
}
