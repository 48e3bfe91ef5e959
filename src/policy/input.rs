//! The variables of one evaluation, built from what the request already has, borrowing
//! its strings; only those the expression reads are built.

use std::borrow::Cow;
use std::collections::HashMap;

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp, CelUInt,
};
use cel::common::value::Val;

use super::{Fields, Reads, Selected};

/// Headers that carry the credentials Portcullis consumes: never visible to a policy (an
/// error message could quote them into the log).
const HIDDEN_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];

/// The URL key's query parameter (`auth::url_key::PARAM`), matched without case as the
/// URL-key method does: never visible to a policy.
const HIDDEN_PARAM: &str = "apikey";

/// What a policy sees of one request.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// `principal.name`
    pub name: &'a str,
    /// `principal.roles`
    pub roles: &'a [String],
    /// `principal.method`: `basic`, `api_key`, `url_key`, `oauth` or `mtls`.
    pub method: &'a str,
    /// `principal.issuer` (null when none).
    pub issuer: Option<&'a str>,
    /// `principal.client_id` (null when none).
    pub client_id: Option<&'a str>,
    /// `claims`: the verified token's claims; an empty map when none.
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// `request.method`, `request.path`, `request.headers`, `request.query`.
    pub request: &'a http::request::Parts,
    /// `source.ip`
    pub source: std::net::IpAddr,
    /// `now`
    pub now: std::time::SystemTime,
}

type Boxed<'v> = Box<dyn Val + 'v>;

fn string<'v>(s: impl Into<Cow<'v, str>>) -> Boxed<'v> {
    Box::new(CelString::from(s.into()))
}

fn optional(s: Option<&str>) -> Boxed<'_> {
    match s {
        Some(s) => string(s),
        None => Box::new(CelNull),
    }
}

fn map<'v>(entries: impl IntoIterator<Item = (Cow<'v, str>, Boxed<'v>)>) -> Boxed<'v> {
    let m: HashMap<CelMapKey<'v>, Boxed<'v>> = entries
        .into_iter()
        .map(|(k, v)| (CelMapKey::String(CelString::from(k)), v))
        .collect();
    Box::new(CelMap::from(m))
}

/// A JSON value as CEL's: numbers as `int` when whole and in range (`claims.tenant ==
/// 42`), else `uint`, else `double`.
fn json(v: &serde_json::Value) -> Boxed<'_> {
    use serde_json::Value as J;
    match v {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(*b)),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            (None, None) => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        J::String(s) => string(s.as_str()),
        J::Array(a) => Box::new(CelList::from(a.iter().map(json).collect::<Vec<_>>())),
        J::Object(o) => claims_map(o),
    }
}

fn claims_map(o: &serde_json::Map<String, serde_json::Value>) -> Boxed<'_> {
    map(o.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), json(v))))
}

/// The claims an expression selects (all of them if it uses `claims` otherwise): a
/// claim the token lacks stays absent, so `claims.x` is still an error and `has(claims.x)`
/// still false.
fn selected_claims<'v>(o: &'v serde_json::Map<String, serde_json::Value>, fields: &'v Fields) -> Boxed<'v> {
    match fields {
        Fields::All => claims_map(o),
        Fields::None => map([]),
        Fields::Only(keys) => map(keys
            .iter()
            .filter_map(|k| o.get_key_value(k.as_str()))
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), json(v)))),
    }
}

/// The entries of `fields` whose names `want` selects, each built only then.
fn some<'v, const N: usize>(want: &Fields, fields: [(&'static str, &dyn Fn() -> Boxed<'v>); N]) -> Boxed<'v> {
    map(fields
        .into_iter()
        .filter(|(name, _)| want.has(name))
        .map(|(name, make)| (Cow::Borrowed(name), make())))
}

/// `request.headers`: lower-case names (as `http` keeps them), the values of a repeated
/// header joined by `, ` in order (RFC 9110 section 5.3), credentials left out.
fn headers(h: &http::HeaderMap) -> Boxed<'_> {
    map(h.keys().filter(|k| !HIDDEN_HEADERS.contains(&k.as_str())).map(|k| {
        let mut values = h.get_all(k).iter();
        let first = values
            .next()
            .map_or(Cow::Borrowed(""), |v| String::from_utf8_lossy(v.as_bytes()));
        let value = match values.next() {
            None => first,
            Some(second) => {
                let mut joined = first.into_owned();
                for v in std::iter::once(second).chain(values) {
                    joined.push_str(", ");
                    joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                Cow::Owned(joined)
            }
        };
        (Cow::Borrowed(k.as_str()), string(value))
    }))
}

/// `request.query`: each parameter's first value, decoded; the URL key left out.
fn query(q: Option<&str>) -> Boxed<'_> {
    let mut out: HashMap<Cow<'_, str>, Cow<'_, str>> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        if !k.eq_ignore_ascii_case(HIDDEN_PARAM) {
            out.entry(k).or_insert(v);
        }
    }
    map(out.into_iter().map(|(k, v)| (k, string(v))))
}

impl<'a> Input<'a> {
    /// Binds the variables `reads` names into `ctx`, each with the fields `selected`.
    pub(super) fn bind<'v>(&self, ctx: &mut cel::Context<'_, 'v>, reads: &Reads, selected: &'v Selected)
    where
        'a: 'v,
    {
        if reads.principal {
            let roles = || -> Boxed<'v> {
                Box::new(CelList::from(
                    self.roles.iter().map(|r| string(r.as_str())).collect::<Vec<_>>(),
                ))
            };
            let principal = some(
                &selected.principal,
                [
                    ("name", &|| string(self.name)),
                    ("roles", &roles),
                    ("method", &|| string(self.method)),
                    ("issuer", &|| optional(self.issuer)),
                    ("client_id", &|| optional(self.client_id)),
                ],
            );
            ctx.add_variable_as_val("principal", principal);
        }
        if reads.claims {
            let claims = match self.claims {
                Some(c) => selected_claims(c, &selected.claims),
                None => map([]),
            };
            ctx.add_variable_as_val("claims", claims);
        }
        if reads.request {
            let r = self.request;
            let request = some(
                &selected.request,
                [
                    ("method", &|| string(r.method.as_str())),
                    ("path", &|| string(r.uri.path())),
                    ("headers", &|| headers(&r.headers)),
                    ("query", &|| query(r.uri.query())),
                ],
            );
            ctx.add_variable_as_val("request", request);
        }
        if reads.source {
            let ip = self.source.to_string();
            ctx.add_variable_as_val("source", map([(Cow::Borrowed("ip"), string(ip))]));
        }
        if reads.now {
            let since = self.now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let utc =
                chrono::DateTime::from_timestamp(since.as_secs() as i64, since.subsec_nanos()).unwrap_or_default();
            ctx.add_variable_as_val("now", Box::new(CelTimestamp::from(utc.fixed_offset())));
        }
    }
}
