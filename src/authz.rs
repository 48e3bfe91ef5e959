//! Authorization: a principal may use an integration only if it passes the plan's
//! `access` rule AND the integration's `senders` rule. Forwarding requires the [`Permit`].

use crate::auth::Principal;
use crate::config::Rule;

/// Proof that authorization passed; only [`authorize`] makes one.
#[derive(Debug)]
pub struct Permit(());

/// The log reason of a refusal: `no_plan_access` or `not_a_sender`.
pub fn authorize(access: &Rule, senders: &Rule, p: &Principal) -> Result<Permit, &'static str> {
    if !access.allows(&p.user, &p.roles) {
        return Err("no_plan_access");
    }
    if !senders.allows(&p.user, &p.roles) {
        return Err("not_a_sender");
    }
    Ok(Permit(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMethod;
    use std::sync::Arc;

    fn p(user: &str, roles: &[&str]) -> Principal {
        Principal {
            user: Arc::from(user),
            roles: Arc::from(roles.iter().map(|r| r.to_string()).collect::<Vec<_>>()),
            method: AuthMethod::Basic,
            client_id: None,
        }
    }

    fn only(roles: &[&str], users: &[&str]) -> Rule {
        Rule::Only {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            users: users.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn both_rules_must_pass() {
        let access = only(&["rest"], &["alice"]);
        let senders = only(&["sender"], &[]);
        assert_eq!(
            authorize(&access, &senders, &p("bob", &["rest"])).unwrap_err(),
            "not_a_sender"
        );
        assert_eq!(
            authorize(&access, &senders, &p("bob", &["sender"])).unwrap_err(),
            "no_plan_access"
        );
        assert!(authorize(&access, &senders, &p("bob", &["rest", "sender"])).is_ok());
        assert!(authorize(&access, &senders, &p("alice", &["sender"])).is_ok());
        assert!(authorize(&Rule::All, &Rule::All, &p("x", &[])).is_ok());
        assert!(authorize(&only(&[], &[]), &Rule::All, &p("x", &["rest"])).is_err());
    }
}
