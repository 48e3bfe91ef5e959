//! `api_key`: `Authorization: Basic key:secret`, a key bound to one user and ONE
//! integration. The secret is checked against its stored SHA-256 in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Principal, Reason, RouteRef, UserEntry};
use crate::config::{ApiKey, AuthMethod, SecretHash};
use crate::shared::{api_key_stored, CredentialKind, Withdrawals};

struct Binding {
    secret_hash: SecretHash,
    user: String,
    plan: String,
    integration: String,
}

pub struct ApiKeys {
    keys: HashMap<String, Binding>,
    users: Arc<HashMap<String, Arc<UserEntry>>>,
    withdrawals: Arc<dyn Withdrawals>,
}

impl ApiKeys {
    pub fn new(
        keys: &[ApiKey],
        users: Arc<HashMap<String, Arc<UserEntry>>>,
        withdrawals: Arc<dyn Withdrawals>,
    ) -> Self {
        let keys = keys
            .iter()
            .map(|k| {
                let b = Binding {
                    secret_hash: k.secret_hash.clone(),
                    user: k.user.clone(),
                    plan: k.plan.clone(),
                    integration: k.integration.clone(),
                };
                (k.key.clone(), b)
            })
            .collect();
        ApiKeys {
            keys,
            users,
            withdrawals,
        }
    }

    pub fn knows(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    pub fn verify(&self, key: &str, secret: &[u8], route: RouteRef<'_>) -> Result<Principal, Reason> {
        let Some(b) = self.keys.get(key) else {
            // Same work as a known key, so timing does not tell which key ids exist.
            let _ = SecretHash::of(b"").matches(secret);
            return Err(Reason::UnknownKey);
        };
        if !b.secret_hash.matches(secret) {
            return Err(Reason::BadSecret);
        }
        let stored = api_key_stored(b.secret_hash.bytes(), &b.user, &b.plan, &b.integration);
        if self.withdrawals.withdrawn(CredentialKind::ApiKey, key, &stored) != Ok(false) {
            return Err(Reason::CredentialWithdrawn);
        }
        if b.plan != route.plan || b.integration != route.integration {
            return Err(Reason::KeyWrongIntegration);
        }
        let user = self.users.get(&b.user).ok_or(Reason::UnknownUser)?;
        user.standing(false)?;
        Ok(user.principal(AuthMethod::ApiKey))
    }
}
