//! Authorization: a principal may use an integration only if it passes the plan's
//! `access` rule AND the integration's `senders` rule AND the `when` policies (CEL) of
//! the plan and the integration, in that order. Forwarding requires the [`Permit`].

use crate::auth::Principal;
use crate::config::{AuthMethod, Rule};
use crate::policy::{Input, Policy};

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

/// A refusal: the log reason (`no_plan_access`, `not_a_sender`, `policy_denied` or
/// `policy_error`), who was refused, and for a policy which one and why (for the log and
/// the admin page, never for the client).
#[derive(Debug)]
pub struct Denied {
    pub reason: &'static str,
    /// Boxed: a refusal is the rare path, and keeps `Result<Permit, Denied>` small.
    pub principal: Box<Principal>,
    pub detail: Option<String>,
}

/// The rules of one route.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub access: &'a Rule,
    pub senders: &'a Rule,
    /// The plan's `when`.
    pub plan: Option<&'a Policy>,
    /// The integration's `when`.
    pub integration: Option<&'a Policy>,
}

impl<'a> Rules<'a> {
    /// Only `access` and `senders`.
    pub fn roles(access: &'a Rule, senders: &'a Rule) -> Self {
        Rules {
            access,
            senders,
            plan: None,
            integration: None,
        }
    }

    /// The `when` policies, each with where it is written.
    fn policies(&self) -> impl Iterator<Item = (&'static str, &'a Policy)> {
        [("plan", self.plan), ("integration", self.integration)]
            .into_iter()
            .filter_map(|(at, p)| p.map(|p| (at, p)))
    }
}

/// What a policy sees of the request besides the principal.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub parts: &'a http::request::Parts,
    /// The client's address (the peer, or the client a trusted proxy names).
    pub client: std::net::IpAddr,
    /// The process state's clock: `now`, read only when a policy is evaluated.
    pub clock: &'a crate::util::Clock,
}

fn input<'a>(p: &'a Principal, seen: &Seen<'a>) -> Input<'a> {
    Input {
        name: &p.user,
        roles: &p.roles,
        method: p.method.as_str(),
        issuer: p.issuer.as_deref(),
        client_id: p.client_id.as_deref(),
        claims: p.claims.as_deref(),
        request: seen.parts,
        source: seen.client,
        now: std::time::UNIX_EPOCH + std::time::Duration::from_secs(seen.clock.unix()),
    }
}

/// Checks `p` against the route's rules: `access`, then `senders`, then each `when`.
/// A `when` is evaluated only when there is one, and only once the others passed.
pub fn authorize(route: usize, rules: &Rules<'_>, seen: &Seen<'_>, p: Principal) -> Result<Permit, Denied> {
    // A name that is not a `[[users]]` entry's (another issuer's user) matches by role only.
    let name = p.rule_name();
    let (reason, detail) = if !rules.access.allows(name, &p.roles) {
        ("no_plan_access", None)
    } else if !rules.senders.allows(name, &p.roles) {
        ("not_a_sender", None)
    } else {
        match rules
            .policies()
            .find_map(|(at, policy)| refused(at, policy, &input(&p, seen)))
        {
            None => {
                return Ok(Permit {
                    route,
                    principal: Some(p),
                })
            }
            Some(refused) => refused,
        }
    };
    Err(Denied {
        reason,
        principal: Box::new(p),
        detail,
    })
}

/// Why the `when` at `at` refuses the request, if it does: false, or an evaluation
/// error (its message, for the log).
fn refused(at: &str, policy: &Policy, input: &Input<'_>) -> Option<(&'static str, Option<String>)> {
    match policy.evaluate(input) {
        Ok(true) => None,
        Ok(false) => Some(Denied::policy(
            "policy_denied",
            format!("the {at}'s `when` is false: {}", policy.source()),
        )),
        Err(e) => Some(Denied::policy(
            "policy_error",
            format!("the {at}'s `when` failed: {e} (in {})", policy.source()),
        )),
    }
}

impl Denied {
    /// A policy's refusal reason and detail.
    fn policy(reason: &'static str, detail: String) -> (&'static str, Option<String>) {
        (reason, Some(detail))
    }
}

/// One rule's value, as `explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// `access`, `senders`, `plan when` or `integration when`.
    pub rule: &'static str,
    /// The expression, for a `when`.
    pub source: Option<String>,
    /// `Ok(passes)`, or a `when`'s evaluation error.
    pub value: Result<bool, String>,
    /// A `when` that reads request headers or the query, which the client chooses.
    pub client_controlled: bool,
}

/// Every rule of the route for `p`, each evaluated (none skipped), for `explain`.
pub fn judge(rules: &Rules<'_>, seen: &Seen<'_>, p: &Principal) -> Vec<Judged> {
    let mut out = vec![
        Judged {
            rule: "access",
            source: None,
            value: Ok(rules.access.allows(p.rule_name(), &p.roles)),
            client_controlled: false,
        },
        Judged {
            rule: "senders",
            source: None,
            value: Ok(rules.senders.allows(p.rule_name(), &p.roles)),
            client_controlled: false,
        },
    ];
    for (at, policy) in rules.policies() {
        out.push(Judged {
            rule: if at == "plan" { "plan when" } else { "integration when" },
            source: Some(policy.source().to_string()),
            value: policy.evaluate(&input(p, seen)),
            client_controlled: policy.reads().client_controlled(),
        });
    }
    out
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

    fn az(access: &Rule, senders: &Rule, p: Principal) -> Result<Permit, Denied> {
        let parts = http::Request::new(()).into_parts().0;
        let seen = Seen {
            parts: &parts,
            client: std::net::Ipv4Addr::LOCALHOST.into(),
            clock: &crate::util::Clock::default(),
        };
        authorize(0, &Rules::roles(access, senders), &seen, p)
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
            az(&access, &senders, p("bob", &["rest"])).unwrap_err().reason,
            "not_a_sender"
        );
        assert_eq!(
            az(&access, &senders, p("bob", &["sender"])).unwrap_err().reason,
            "no_plan_access"
        );
        assert!(az(&access, &senders, p("bob", &["rest", "sender"])).is_ok());
        assert!(az(&access, &senders, p("alice", &["sender"])).is_ok());
        assert!(az(&Rule::All, &Rule::All, p("x", &[])).is_ok());
        assert!(az(&only(&[], &[]), &Rule::All, p("x", &["rest"])).is_err());
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
            az(&by_name, &Rule::All, foreign.clone()).unwrap_err().reason,
            "no_plan_access"
        );
        assert!(az(&Rule::All, &by_name, p("alice", &[])).is_ok());
        assert!(az(&only(&["partner"], &[]), &Rule::All, foreign).is_ok());
    }

    /// The `when` policies come after `access` and `senders`, the plan's first; false and
    /// an evaluation error are two reasons, with the expression in the detail.
    #[test]
    fn policies_after_the_roles() {
        let parts = http::Request::new(()).into_parts().0;
        let seen = Seen {
            parts: &parts,
            client: std::net::Ipv4Addr::LOCALHOST.into(),
            clock: &crate::util::Clock::default(),
        };
        let yes = crate::policy::compile("principal.name == 'bob'").unwrap();
        let no = crate::policy::compile("'admin' in principal.roles").unwrap();
        let broken = crate::policy::compile("claims.tenant == 1").unwrap();
        let access = only(&["rest"], &[]);
        let rules = |plan, integration| Rules {
            access: &access,
            senders: &Rule::All,
            plan,
            integration,
        };
        let run = |r: Rules<'_>, who: &str| authorize(0, &r, &seen, p(who, &["rest"]));
        assert!(run(rules(Some(&yes), Some(&yes)), "bob").is_ok());
        assert_eq!(run(rules(Some(&no), None), "eve").unwrap_err().reason, "policy_denied");
        let d = run(rules(Some(&yes), Some(&no)), "bob").unwrap_err();
        assert_eq!(d.reason, "policy_denied");
        assert!(
            d.detail
                .as_deref()
                .unwrap()
                .starts_with("the integration's `when` is false"),
            "{d:?}"
        );
        let d = run(rules(Some(&broken), Some(&no)), "bob").unwrap_err();
        assert_eq!(d.reason, "policy_error");
        let detail = d.detail.unwrap();
        assert!(
            detail.starts_with("the plan's `when` failed") && detail.contains("tenant"),
            "{detail}"
        );
        // `access` is first: a failing policy is not even evaluated.
        let d = authorize(0, &rules(Some(&broken), None), &seen, p("bob", &[])).unwrap_err();
        assert_eq!(d.reason, "no_plan_access");
        let judged = judge(&rules(Some(&yes), Some(&broken)), &seen, &p("bob", &["rest"]));
        let values: Vec<_> = judged.iter().map(|j| (j.rule, j.value == Ok(true))).collect();
        assert_eq!(
            values,
            [
                ("access", true),
                ("senders", true),
                ("plan when", true),
                ("integration when", false)
            ]
        );
        assert!(judged[3].value.is_err());
    }
}
