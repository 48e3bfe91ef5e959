//! Authorization: a principal may use an integration only if it passes the plan's
//! `access` rule AND the integration's `senders` rule. Forwarding requires the [`Permit`].

use crate::auth::Principal;
use crate::config::{AuthMethod, Rule};

/// Proof that authorization passed for one route: the route (its index in the
/// generation's route list) and the principal it passed for. Only [`authorize`] and
/// [`Permit::public`] make one, and rewriting and forwarding a request consume it, so no
/// request reaches an upstream without passing authorization, by construction.
#[derive(Debug)]
pub struct Permit {
    route: usize,
    principal: Option<Principal>,
}

impl Permit {
    /// The permit of a route with `auth = "none"`: no principal. `None` for any route
    /// whose methods authenticate.
    pub fn public(route: usize, methods: &[AuthMethod]) -> Option<Permit> {
        (methods == [AuthMethod::None]).then_some(Permit { route, principal: None })
    }

    pub fn route(&self) -> usize {
        self.route
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }
}

/// A refusal: the log reason (`no_plan_access` or `not_a_sender`) and who was refused.
#[derive(Debug)]
pub struct Denied {
    pub reason: &'static str,
    pub principal: Principal,
}

/// Checks `p` against the plan's `access` AND the integration's `senders` for `route`.
pub fn authorize(route: usize, access: &Rule, senders: &Rule, p: Principal) -> Result<Permit, Denied> {
    // A name that is not a `[[users]]` entry's (another issuer's user) matches by role only.
    let name = p.rule_name();
    let reason = if !access.allows(name, &p.roles) {
        "no_plan_access"
    } else if !senders.allows(name, &p.roles) {
        "not_a_sender"
    } else {
        return Ok(Permit {
            route,
            principal: Some(p),
        });
    };
    Err(Denied { reason, principal: p })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn p(user: &str, roles: &[&str]) -> Principal {
        Principal::new(
            Arc::from(user),
            Arc::from(roles.iter().map(|r| r.to_string()).collect::<Vec<_>>()),
            AuthMethod::Basic,
            None,
        )
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
            authorize(0, &access, &senders, p("bob", &["rest"])).unwrap_err().reason,
            "not_a_sender"
        );
        assert_eq!(
            authorize(0, &access, &senders, p("bob", &["sender"]))
                .unwrap_err()
                .reason,
            "no_plan_access"
        );
        assert!(authorize(0, &access, &senders, p("bob", &["rest", "sender"])).is_ok());
        assert!(authorize(0, &access, &senders, p("alice", &["sender"])).is_ok());
        assert!(authorize(0, &Rule::All, &Rule::All, p("x", &[])).is_ok());
        assert!(authorize(0, &only(&[], &[]), &Rule::All, p("x", &["rest"])).is_err());
        assert!(Permit::public(0, &[AuthMethod::Basic]).is_none());
        assert!(Permit::public(0, &[AuthMethod::None, AuthMethod::Basic]).is_none());
        assert!(Permit::public(3, &[AuthMethod::None]).is_some_and(|p| p.route() == 3 && p.principal().is_none()));
    }

    /// Another issuer's `alice` (not a `[[users]]` entry's name) is not matched by a
    /// rule naming `alice`, only by its roles.
    #[test]
    fn names_of_other_issuers_match_by_role_only() {
        let foreign = Principal {
            local_user: false,
            ..p("alice", &["partner"])
        }
        .with_issuer(Arc::from("partner"));
        let by_name = only(&[], &["alice"]);
        assert_eq!(
            authorize(0, &by_name, &Rule::All, foreign.clone()).unwrap_err().reason,
            "no_plan_access"
        );
        assert!(authorize(0, &Rule::All, &by_name, p("alice", &[])).is_ok());
        assert!(authorize(0, &only(&["partner"], &[]), &Rule::All, foreign).is_ok());
    }
}
