//! Policies in CEL (the Common Expression Language, through the `cel` crate of the
//! cel-rust project): `when = '...'` on a plan or an integration, an expression that must
//! be true besides `access` and `senders`.
//!
//! An expression is compiled once per config generation ([`compile`]): a syntax error, a
//! variable other than `principal`, `claims`, `request`, `source` and `now`, or an unknown
//! field of `principal`, `request` or `source` is refused with its offset in the
//! expression, so `check` can point at it. Compiling also records which variables the
//! expression reads ([`Reads`]), so that evaluating it builds only those, and so that
//! `explain` can say when a policy reads what the client controls (headers, query).
//!
//! The variables are built for each evaluation from what the request already has
//! ([`Input`]), borrowing its strings rather than copying them. The credentials the
//! gateway consumes are never visible: no `authorization` or `proxy-authorization`
//! header, no `apiKey` query parameter.
//!
//! This module is a leaf: it knows nothing of the crate above it.

mod input;

use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr};
use cel::IdedExpr;

pub use input::Input;

/// The longest expression accepted, in bytes: a config's policy, not a program.
pub const MAX_SOURCE: usize = 4096;
/// How deeply an expression may nest (brackets, and unary operators in a row).
pub const MAX_NESTING: usize = 32;
/// The stack the parser runs on: ample for [`MAX_NESTING`] levels.
const PARSER_STACK: usize = 64 << 20;

/// Where `source` first nests deeper than [`MAX_NESTING`] (outside string literals):
/// brackets of any kind, and `!` or `-` operators in a row, each count a level.
fn too_deep(source: &str) -> Option<usize> {
    let bytes = source.as_bytes();
    let (mut depth, mut unary, mut i) = (0usize, 0usize, 0usize);
    let mut quote: Option<&[u8]> = None;
    while i < bytes.len() {
        if let Some(q) = quote {
            if bytes[i] == b'\\' {
                i += 2;
                continue;
            }
            if bytes[i..].starts_with(q) {
                i += q.len();
                quote = None;
                continue;
            }
            i += 1;
            continue;
        }
        match bytes[i] {
            b'\'' | b'"' => {
                let triple = bytes[i..].starts_with(&[bytes[i]; 3]);
                quote = Some(if triple { &bytes[i..i + 3] } else { &bytes[i..i + 1] });
                i += if triple { 3 } else { 1 };
                unary = 0;
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'!' | b'-' => unary += 1,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => unary = 0,
        }
        if depth + unary > MAX_NESTING {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The longest evaluation error message kept for the log and the admin page.
const MAX_MESSAGE: usize = 300;

/// The variables an expression may name.
pub const VARIABLES: [&str; 5] = ["principal", "claims", "request", "source", "now"];
const PRINCIPAL_FIELDS: [&str; 5] = ["name", "roles", "method", "issuer", "client_id"];
const REQUEST_FIELDS: [&str; 4] = ["method", "path", "headers", "query"];
const SOURCE_FIELDS: [&str; 1] = ["ip"];
/// CEL's type names, which are identifiers too (`type(x) == string`), and the namespaces
/// of the functions the environment declares (`optional.of`, `strings.quote`).
const BUILTIN_NAMES: [&str; 13] = [
    "bool",
    "bytes",
    "double",
    "int",
    "uint",
    "string",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
    "optional",
    "strings",
];

/// The environment every policy is compiled and run in: the standard library, and the
/// strings extension (`split`, `lowerAscii`, `indexOf`, ...). Built once per process.
fn env() -> &'static Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = cel::Env::stdlib();
        // Cannot fail on a fresh standard environment: the extension's overload ids are
        // its own. Should it ever, `split` is missing and the unit tests say so.
        let _ = env.add_extension(cel::extensions::strings);
        Arc::new(env)
    })
}

/// What an expression reads, decided when it is compiled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    pub principal: bool,
    pub claims: bool,
    pub request: bool,
    /// `request.headers` (or `request` as a whole).
    pub headers: bool,
    /// `request.query` (or `request` as a whole).
    pub query: bool,
    pub source: bool,
    pub now: bool,
}

impl Reads {
    /// The policy reads input the client chooses freely: request headers or the query.
    pub fn client_controlled(&self) -> bool {
        self.headers || self.query
    }
}

/// The fields of a variable an expression selects: only those are built for it, unless
/// it uses the variable otherwise (as a whole, indexed, iterated), when all are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Fields {
    #[default]
    None,
    Only(Vec<String>),
    All,
}

impl Fields {
    fn add(&mut self, field: Option<&str>) {
        match (field, &mut *self) {
            (_, Fields::All) => {}
            (None, _) => *self = Fields::All,
            (Some(f), Fields::Only(list)) => {
                if !list.iter().any(|x| x == f) {
                    list.push(f.to_string());
                }
            }
            (Some(f), Fields::None) => *self = Fields::Only(vec![f.to_string()]),
        }
    }

    /// Whether `field` is to be built.
    pub(crate) fn has(&self, field: &str) -> bool {
        match self {
            Fields::None => false,
            Fields::Only(list) => list.iter().any(|x| x == field),
            Fields::All => true,
        }
    }
}

/// What each variable needs built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selected {
    pub principal: Fields,
    pub claims: Fields,
    pub request: Fields,
}

/// A compiled `when` expression; cheap to clone (shared).
#[derive(Clone)]
pub struct Policy(Arc<Compiled>);

struct Compiled {
    source: String,
    program: cel::Program,
    reads: Reads,
    selected: Selected,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Policy").field(&self.0.source).finish()
    }
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.0.source == other.0.source
    }
}

/// Why an expression does not compile: the message, and the byte offset in the
/// expression it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    pub offset: usize,
    pub message: String,
}

/// Compiles `source`, refusing a syntax error and any name that is not one of
/// [`VARIABLES`] (or a field of `principal`, `request` or `source` that does not exist).
pub fn compile(source: &str) -> Result<Policy, CompileError> {
    if source.len() > MAX_SOURCE {
        return Err(CompileError {
            offset: 0,
            message: format!("the expression is longer than {MAX_SOURCE} bytes"),
        });
    }
    if source.trim().is_empty() {
        return Err(CompileError {
            offset: 0,
            message: "the expression is empty".into(),
        });
    }
    if let Some(offset) = too_deep(source) {
        return Err(CompileError {
            offset,
            message: format!("the expression nests deeper than {MAX_NESTING} levels"),
        });
    }
    // CEL's parser recurses per level of the expression: it runs on a thread whose stack
    // holds the deepest expression allowed, whatever thread loads the config.
    let owned = source.to_string();
    let parsed = std::thread::Builder::new()
        .name("policy-compile".into())
        .stack_size(PARSER_STACK)
        .spawn(move || env().compile(&owned).map_err(|e| syntax_error(&owned, &e)))
        .map_err(|e| CompileError {
            offset: 0,
            message: format!("cannot start the compiler: {e}"),
        })?
        .join()
        .map_err(|_| CompileError {
            offset: 0,
            message: "the expression cannot be compiled".into(),
        })?;
    let program = parsed?;
    let mut walk = Walk {
        bound: Vec::new(),
        comprehension: false,
        reads: Reads::default(),
        selected: Selected::default(),
    };
    walk.expr(program.expression()).map_err(|(id, message)| {
        let chars = program
            .source_info()
            .offset_for(id)
            .map_or(0, |(start, _)| start as usize);
        CompileError {
            offset: byte_offset(source, chars),
            message,
        }
    })?;
    Ok(Policy(Arc::new(Compiled {
        source: source.to_string(),
        program,
        reads: walk.reads,
        selected: walk.selected,
    })))
}

/// The first parse error, at its offset: CEL reports a 1-based line and a 1-based column
/// in characters.
fn syntax_error(source: &str, e: &cel::ParseErrors) -> CompileError {
    let Some(first) = e.errors.first() else {
        return CompileError {
            offset: 0,
            message: "syntax error".into(),
        };
    };
    let (line, col) = (first.pos.0.max(1) as usize, (first.pos.1.max(1) - 1) as usize);
    let line_start: usize = source.split_inclusive('\n').take(line - 1).map(str::len).sum();
    let in_line = source.get(line_start..).unwrap_or("");
    let offset = line_start + byte_offset(in_line, col);
    CompileError {
        offset: offset.min(source.len()),
        message: format!("syntax error: {}", first.msg),
    }
}

/// The byte offset of the `chars`-th character of `s` (its length past the end).
fn byte_offset(s: &str, chars: usize) -> usize {
    s.char_indices().nth(chars).map_or(s.len(), |(i, _)| i)
}

/// The walk over a parsed expression that checks its names and records what it reads.
struct Walk {
    /// The variables comprehensions bind where the walk is (`x` in `l.all(x, ...)`).
    bound: Vec<String>,
    /// The walk is inside a comprehension.
    comprehension: bool,
    reads: Reads,
    selected: Selected,
}

type Refused = (u64, String);

impl Walk {
    fn expr(&mut self, e: &IdedExpr) -> Result<(), Refused> {
        match &e.expr {
            Expr::Ident(name) => self.root(e.id, name, None),
            Expr::Select(s) => match &s.operand.expr {
                Expr::Ident(name) => self.root(s.operand.id, name, Some(&s.field)),
                _ => self.expr(&s.operand),
            },
            Expr::Call(c) => {
                if c.func_name == "matches" {
                    return Err((
                        e.id,
                        "regular expressions (`matches`) are not available in `when`: each call compiles its pattern again, a cost per request without bound; use `startsWith`, `endsWith`, `contains` or `in`".into(),
                    ));
                }
                if let Some(t) = &c.target {
                    match &t.expr {
                        // A namespaced function (`optional.of(1)`) is no variable.
                        Expr::Ident(ns) if BUILTIN_NAMES.contains(&ns.as_str()) => {}
                        _ => self.expr(t)?,
                    }
                }
                c.args.iter().try_for_each(|a| self.expr(a))
            }
            Expr::Comprehension(c) => {
                if self.comprehension {
                    return Err((
                        e.id,
                        "a comprehension (`all`, `exists`, `exists_one`, `map`, `filter`) inside another is refused: its cost grows with the square of the list".into(),
                    ));
                }
                self.expr(&c.iter_range)?;
                self.comprehension = true;
                let before = self.bound.len();
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.iter().cloned());
                self.bound.push(c.accu_var.clone());
                let r = [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
                    .into_iter()
                    .try_for_each(|x| self.expr(x));
                self.bound.truncate(before);
                self.comprehension = false;
                r
            }
            Expr::List(l) => l.elements.iter().try_for_each(|x| self.expr(x)),
            Expr::Map(m) => m.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(me) => {
                    self.expr(&me.key)?;
                    self.expr(&me.value)
                }
                EntryExpr::StructField(f) => self.expr(&f.value),
            }),
            Expr::Struct(s) => Err((
                e.id,
                format!("message literals (`{}{{...}}`) are not supported", s.type_name),
            )),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    /// A name at the root of a path, and the field selected on it, if any.
    fn root(&mut self, id: u64, name: &str, field: Option<&str>) -> Result<(), Refused> {
        if self.bound.iter().any(|b| b == name) || BUILTIN_NAMES.contains(&name) {
            return Ok(());
        }
        let fields: &[&str] = match name {
            "principal" => {
                self.reads.principal = true;
                self.selected.principal.add(field);
                &PRINCIPAL_FIELDS
            }
            "request" => {
                self.reads.request = true;
                self.selected.request.add(field);
                match field {
                    Some("headers") => self.reads.headers = true,
                    Some("query") => self.reads.query = true,
                    Some(_) => {}
                    None => {
                        self.reads.headers = true;
                        self.reads.query = true;
                    }
                }
                &REQUEST_FIELDS
            }
            "source" => {
                self.reads.source = true;
                &SOURCE_FIELDS
            }
            "claims" => {
                self.reads.claims = true;
                self.selected.claims.add(field);
                return Ok(());
            }
            "now" => {
                self.reads.now = true;
                return Ok(());
            }
            _ => {
                return Err((
                    id,
                    format!(
                        "unknown variable `{name}`: expected one of {}",
                        VARIABLES.map(|v| format!("`{v}`")).join(", ")
                    ),
                ))
            }
        };
        match field {
            Some(f) if !fields.contains(&f) => Err((
                id,
                format!(
                    "`{name}` has no field `{f}`: expected one of {}",
                    fields.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl Policy {
    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// What the expression reads.
    pub fn reads(&self) -> Reads {
        self.0.reads
    }

    /// Evaluates the expression for one request: `Ok(true)` passes, `Ok(false)` denies,
    /// `Err(message)` is an evaluation error (a missing claim, a wrong type, a result that
    /// is not a bool), with CEL's message, bounded and without control characters.
    pub fn evaluate(&self, input: &Input<'_>) -> Result<bool, String> {
        let mut ctx = cel::Context::with_env(env().clone());
        input.bind(&mut ctx, &self.0.reads, &self.0.selected);
        match self.0.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("the expression gave a {}, not true or false", other.type_of())),
            Err(e) => Err(printable(&without_values(&e.to_string()))),
        }
    }
}

/// CEL's message with the strings and bytes it quotes left out: they are values of the
/// request or the token (a header, a claim), which the log and the admin page must not
/// carry. `String("secret")` becomes `String(…)`.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("String(\"").or_else(|| rest.find("Bytes(")) {
        let open = i + rest[i..].find('(').unwrap_or(0) + 1;
        out.push_str(&rest[..open]);
        out.push('…');
        // The value ends at the `)` that closes it, after a quoted string's end.
        let tail = &rest[open..];
        let end = if tail.starts_with('"') {
            let mut escaped = false;
            tail.char_indices()
                .skip(1)
                .find(|&(_, c)| {
                    let close = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    close
                })
                .map_or(tail.len(), |(j, _)| j + 1)
        } else {
            tail.find(')').unwrap_or(tail.len())
        };
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `message` cut to [`MAX_MESSAGE`] characters, control characters as `?`: it goes to the
/// log and the admin page, and may quote values the client chose.
fn printable(message: &str) -> String {
    let mut out: String = message
        .chars()
        .take(MAX_MESSAGE)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if message.chars().nth(MAX_MESSAGE).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
