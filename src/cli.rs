//! The command line of the contract: `serve`, `check`, `hash-password`, `keygen`, `urlkey`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::redact::{scrub_url, secret_name, Redactor};
use crate::config::{self, SecretHash};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An authentication gateway for integration services"
)]
struct Cli {
    /// Log format of `serve`.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file; defaults to $PORTCULLIS_CONFIG, else config/portcullis.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate the config: exit 0, or 1 with every error as FILE:LINE:COL: message.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Fail on warnings too (fail-open defaults, plain-http identity servers), for CI
        /// pipelines.
        #[arg(long)]
        strict: bool,
    },
    /// Read a password on stdin and print its argon2id PHC string.
    HashPassword,
    /// Make an API key and secret for one user and ONE integration.
    Keygen {
        #[arg(long)]
        user: String,
        /// PLAN/INTEGRATION
        #[arg(long)]
        integration: String,
    },
    /// Make a URL key for a user.
    Urlkey {
        #[arg(long)]
        user: String,
    },
    /// Egress endpoints.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Ask a running gateway's admin listener whether it is alive (`/healthz`) or ready
    /// (`/readyz` with `--ready`); exit 0 if so. For container health checks: no curl
    /// needed.
    Health {
        /// Read for `[admin] address` only: a config the running server refused at
        /// reload does not fail the check.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin listener's address, instead of the config's `[admin] address`.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        #[arg(long)]
        ready: bool,
    },
    /// Say what the gateway would do with one request, without starting a server: the
    /// route, the auth methods, the credentials found, and the decision with its reason
    /// and the fix. Passwords are checked for real (argon2id); secrets are never printed.
    Explain {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The client address the request comes from (lockout and logs use it).
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: std::net::IpAddr,
        /// A request header, as `Name: value`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// GET, POST, ...
        method: String,
        /// The URL (or just the path and query) as the client sends it.
        url: String,
    },
    /// Print the config with every secret removed, safe to attach to a support ticket.
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum EndpointCommand {
    /// "Test Authentication": fetch a token (OAuth2) or send one request; exit 0 or 1.
    Test {
        /// The endpoint's name.
        name: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("PORTCULLIS_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/portcullis.toml"))
}

/// Entry point of the binary.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config_path(config), cli.log_format),
        Command::Check { config, strict } => return check(config_path(config), strict),
        Command::HashPassword => hash_password(),
        Command::Keygen { user, integration } => keygen(&user, &integration),
        Command::Urlkey { user } => urlkey(&user),
        Command::Endpoint {
            command: EndpointCommand::Test { name, config },
        } => return endpoint_test(config_path(config), &name),
        Command::Export { config } => export(config_path(config)),
        Command::Health { config, admin, ready } => return health(config_path(config), admin, ready),
        Command::Explain {
            config,
            client_ip,
            headers,
            method,
            url,
        } => return explain(config_path(config), client_ip, &headers, &method, &url),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: PathBuf, strict: bool) -> ExitCode {
    match config::load(&path) {
        Ok(loaded) => {
            print_diagnostics(&path, &loaded.warnings);
            if strict && !loaded.warnings.is_empty() {
                eprintln!(
                    "{}: {} warning(s), refused by --strict",
                    path.display(),
                    loaded.warnings.len()
                );
                return ExitCode::FAILURE;
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_diagnostics(&path, &errors.0);
            ExitCode::FAILURE
        }
    }
}

/// Logs go through a background writer: a slow or unread stdout drops log lines (lossy)
/// instead of stalling the request path. Keep the guard alive to flush at exit.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.fmt_fields(text_fields()).init(),
        // JSON strings escape every control character themselves: one event, one line.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// The text log's fields: `name=value` separated by spaces, the message bare, as the
/// default formatter writes them, but every value (the message, `%Display` fields, span
/// fields) passes through [`crate::util::Escaped`]. A value a client or peer controls
/// (a certificate name in an error, a path, a header, a claim) can therefore neither end
/// the line and forge the next one nor send escape sequences to a terminal, whatever the
/// call site wrote. `?Debug` and `&str` values keep their quotes.
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let name = field.name();
        let value = crate::util::Escaped(format_args!("{value:?}"));
        if name == "message" {
            write!(w, "{value}")
        } else if name.starts_with("log.") {
            // What tracing-log carries over from the `log` crate (target, file, line):
            // the event's metadata already says it, as the default formatter assumes.
            Ok(())
        } else {
            write!(w, "{name}={value}")
        }
    })
    .delimited(" ")
}

fn serve(path: PathBuf, format: LogFormat) -> anyhow::Result<()> {
    let _log_guard = init_logging(format);
    let redactor = Redactor::of_file(&path);
    let loaded = config::load(&path)
        .map_err(|e| anyhow::anyhow!("{}\nconfig refused; nothing started", redactor.text(&e.to_string())))?;
    for w in &loaded.warnings {
        tracing::warn!("{}", redactor.text(&w.to_string()));
    }
    let config = loaded.config;
    // Each connection is a file descriptor: raise the soft limit to the hard one so that
    // max_connections, not a default of 1024, is what caps them.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < config.limits.max_connections + 64 => tracing::warn!(
            nofile = n,
            max_connections = config.limits.max_connections,
            "the open-file limit is below max_connections"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    match config.runtime.model {
        // The inbound workers run runtimes of their own (`run`): this one serves the
        // other listeners, reloads and signals.
        config::RuntimeModel::PerCore => {
            rt.worker_threads(1);
        }
        config::RuntimeModel::Shared => {
            if let Some(n) = config.runtime.worker_threads {
                rt.worker_threads(n);
            }
        }
    }
    let rt = rt.build().context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let bound = crate::server::Bound::bind(&config)?;
        let state = crate::state::State::start(config)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Signal handlers first: a signal sent as soon as "listening" shows must be handled.
        let (trigger, shutdown) = crate::server::shutdown::channel();
        let terminated = crate::server::shutdown::signal();
        tokio::spawn(crate::reload::watch(
            state.clone(),
            path.clone(),
            crate::reload::hangups(),
            shutdown.clone(),
        ));
        let draining = state.clone();
        tokio::spawn(async move {
            terminated.await;
            // Not ready any more, still serving: load balancers and Kubernetes stop
            // sending before the listeners close. A second signal cuts the delay short.
            draining.set_ready(false);
            let delay = draining.gateway().config.limits.drain_delay;
            tracing::info!(drain_delay = ?delay, "shutdown signal received; /readyz answers 503, then draining");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::server::shutdown::signal() => {}
            }
            trigger.fire();
        });
        let gw = state.gateway();
        tracing::info!(
            listener = "inbound",
            address = %bound.inbound_addr(),
            tls = gw.config.listen.tls.is_some(),
            config = %path.display(),
            "listening"
        );
        if let Some(a) = bound.admin_addr() {
            tracing::info!(listener = "admin", address = %a, "listening");
        }
        if let Some(a) = bound.egress_addr() {
            tracing::info!(listener = "egress", address = %a, "listening");
        }
        if let Some(a) = bound.forward_auth_addr() {
            tracing::info!(listener = "forward_auth", address = %a, "listening");
        }
        crate::run::run(state, bound, shutdown).await;
        anyhow::Ok(())
    })?;
    Ok(())
}

fn hash_password() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("cannot read stdin")?;
    let password = input
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&input);
    anyhow::ensure!(!password.is_empty(), "no password on stdin");
    let hash = crate::auth::basic::hash_password(password).map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
    println!("{hash}");
    Ok(())
}

/// `bytes` random bytes as unpadded base64url.
fn random_token(bytes: usize) -> String {
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn keygen(user: &str, integration: &str) -> anyhow::Result<()> {
    let Some((plan, integ)) = integration.split_once('/') else {
        anyhow::bail!("--integration must be PLAN/INTEGRATION, not `{integration}`");
    };
    anyhow::ensure!(
        !plan.is_empty() && !integ.is_empty(),
        "--integration must be PLAN/INTEGRATION"
    );
    anyhow::ensure!(!user.is_empty(), "--user must not be empty");
    let id: [u8; 16] = rand::random();
    let key = format!("pk_{}", hex::encode(id));
    let secret = random_token(32);
    let hash = SecretHash::of(secret.as_bytes());
    println!("API key:    {key}");
    println!("API secret: {secret}");
    println!("(the secret is shown once; clients send it as Authorization: Basic base64(key:secret))");
    println!();
    println!("[[api_keys]]");
    println!("key = \"{key}\"");
    println!("secret_hash = \"{hash}\"");
    println!("user = \"{user}\"");
    println!("integration = \"{integration}\"");
    Ok(())
}

fn urlkey(user: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!user.is_empty(), "--user must not be empty");
    let key = random_token(32);
    let hash = SecretHash::of(key.as_bytes());
    println!("URL key: {key}");
    println!("(shown once; append ?apiKey=KEY to the integration URL)");
    println!();
    println!("# in the [[users]] entry of {user}:");
    println!("url_key_hash = \"{hash}\"");
    Ok(())
}

fn endpoint_test(path: PathBuf, name: &str) -> ExitCode {
    let loaded = match config::load(&path) {
        Ok(l) => l,
        Err(errors) => {
            print_diagnostics(&path, &errors.0);
            return ExitCode::FAILURE;
        }
    };
    // What the endpoint sends, resolved (`{ env }` and `{ file }` too), and its Basic
    // header: never printed, even when the target echoes it or an error quotes it.
    let mut redactor = Redactor::of_file(&path);
    for e in loaded.config.endpoints.iter().filter(|e| e.name == name) {
        match &e.auth {
            config::EndpointAuth::Basic { username, password, .. } => {
                redactor.add(password.expose_str());
                redactor.add(
                    &base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose_str())),
                );
            }
            config::EndpointAuth::OAuth2 {
                client_secret,
                password,
                ..
            } => {
                for s in [client_secret, password].into_iter().flatten() {
                    redactor.add(s.expose_str());
                }
            }
            config::EndpointAuth::None | config::EndpointAuth::Principal | config::EndpointAuth::Signature { .. } => {}
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = crate::metrics::Metrics::new();
    let egress = match crate::egress::Egress::new(
        &loaded.config.endpoints,
        &metrics,
        &crate::shared::Backend::memory(&metrics).egress,
    ) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(endpoint) = egress.endpoints.get(name) else {
        let mut names: Vec<&String> = egress.endpoints.keys().collect();
        names.sort();
        eprintln!("portcullis: no endpoint named `{name}` (configured: {names:?})");
        return ExitCode::FAILURE;
    };
    let ok = rt.block_on(async {
        if let Some(result) = endpoint.test_token().await {
            return match result {
                Ok(()) => {
                    println!("OK: endpoint `{name}`: OAuth2 token fetched");
                    true
                }
                Err(e) => {
                    println!("FAILED: endpoint `{name}`: {}", redactor.text(&e.to_string()));
                    false
                }
            };
        }
        match endpoint.probe().await {
            Ok(resp) => {
                let status = resp.status();
                let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(resp.into_body(), 4096))
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                if status.as_u16() < 400 {
                    println!("OK: endpoint `{name}` answered {status}");
                    true
                } else {
                    println!("FAILED: endpoint `{name}` answered {status}");
                    if !body.is_empty() {
                        // The target's words, escaped: they cannot drive the terminal.
                        println!("{}", crate::util::Escaped(redactor.text(&body)));
                    }
                    false
                }
            }
            Err(e) => {
                println!("FAILED: endpoint `{name}`: {}", redactor.text(&e.to_string()));
                false
            }
        }
    });
    if let Some(der) = endpoint.verifier.seen_cert.lock().ok().and_then(|s| s.clone()) {
        // What the certificate is, so the operator can decide on trust_self_signed or a pin.
        println!("certificate presented:");
        for line in crate::egress::tls::describe(&der).lines() {
            println!("  {line}");
        }
    }
    if let Some(fp) = endpoint.verifier.seen.lock().ok().and_then(|s| *s) {
        println!(
            "certificate sha256: {}  (pin_sha256 = \"{}\")",
            hex::encode(fp),
            hex::encode(fp)
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The admin address when `[admin]` has no `address` (as `config::load` defaults it).
const DEFAULT_ADMIN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);

/// The admin listener's address from the config file, with the least parsing possible:
/// the file as a plain TOML document, `[admin] address` and nothing else. A config the
/// running server refused at reload (an unknown key, a missing secret file, a bad rule)
/// and kept serving without must not fail the health check, or the orchestrator restarts
/// a healthy server into a config it cannot load. A file that is not even TOML is
/// scanned for its `[admin]` table's `address = "..."` line. `Ok(None)`: no `[admin]`.
/// Errors never quote the file (it may hold secrets), only its positions.
fn admin_address(path: &std::path::Path) -> Result<Option<std::net::SocketAddr>, String> {
    // The same file rules as `serve`: a FIFO, a device or a huge file never hangs or
    // fills the health check that runs every few seconds.
    let text = config::secret::read_text(path, config::secret::FileKind::Config)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parse = |s: &str| {
        s.parse::<std::net::SocketAddr>().map_err(|_| {
            format!(
                "{}: [admin] address is not IP:PORT such as 127.0.0.1:9901",
                path.display()
            )
        })
    };
    match text.parse::<toml::Table>() {
        Ok(doc) => match doc.get("admin") {
            None => Ok(None),
            Some(toml::Value::Table(admin)) => match admin.get("address") {
                None => Ok(Some(DEFAULT_ADMIN)),
                Some(toml::Value::String(s)) => parse(s).map(Some),
                Some(_) => Err(format!("{}: [admin] address is not a string", path.display())),
            },
            Some(_) => Err(format!("{}: `admin` is not a table", path.display())),
        },
        Err(e) => {
            let at = e
                .span()
                .map(|sp| {
                    format!(
                        " at line {}",
                        text[..sp.start.min(text.len())].matches('\n').count() + 1
                    )
                })
                .unwrap_or_default();
            let not_toml = |why: &str| {
                format!(
                    "{} is not valid TOML{at}, and {why}; pass --admin ADDRESS",
                    path.display()
                )
            };
            match admin_by_lines(&text) {
                Ok(Some(Some(a))) => parse(&a).map(Some),
                Ok(Some(None)) => Ok(Some(DEFAULT_ADMIN)),
                Ok(None) => Err(not_toml("it has no [admin] table line")),
                Err(why) => Err(not_toml(why)),
            }
        }
    }
}

/// For a file that does not parse: the `address = "..."` line of its one `[admin]` table,
/// by lines. `Ok(None)`: no `[admin]` line; `Ok(Some(None))`: a table without `address`.
fn admin_by_lines(text: &str) -> Result<Option<Option<String>>, &'static str> {
    let bare = |line: &str| line.split('#').next().unwrap_or("").trim().to_string();
    let mut lines = text.lines().map(bare);
    if text.lines().map(bare).filter(|l| l == "[admin]").count() > 1 {
        return Err("it has more than one [admin] line");
    }
    if !lines.any(|l| l == "[admin]") {
        return Ok(None);
    }
    for line in lines.take_while(|l| !l.starts_with('[')) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "address" {
            continue;
        }
        let value = value.trim();
        return match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(v) if !v.contains('"') && !v.contains('\\') => Ok(Some(Some(v.to_string()))),
            _ => Err("its [admin] address line is not a plain string"),
        };
    }
    Ok(Some(None))
}

/// `portcullis health`: GET the admin listener's `/healthz` (or `/readyz`).
fn health(path: PathBuf, admin: Option<std::net::SocketAddr>, ready: bool) -> ExitCode {
    let admin = match admin {
        Some(a) => Some(a),
        None => match admin_address(&path) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("portcullis: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let Some(mut addr) = admin else {
        eprintln!("portcullis: {} has no [admin] listener to ask", path.display());
        return ExitCode::FAILURE;
    };
    // A listener on every address is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let url = format!("http://{addr}/{}", if ready { "readyz" } else { "healthz" });
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = rt.block_on(async {
        let req = http::Request::get(&url)
            .body(crate::error::full(bytes::Bytes::new()))
            .ok()?;
        let client = crate::upstream::client();
        let resp = tokio::time::timeout(std::time::Duration::from_secs(3), client.request(req))
            .await
            .ok()?
            .ok()?;
        Some(resp.status())
    });
    match status {
        Some(s) if s.is_success() => {
            println!("{url}: {s}");
            ExitCode::SUCCESS
        }
        Some(s) => {
            println!("{url}: {s}");
            ExitCode::FAILURE
        }
        None => {
            println!("{url}: no answer");
            ExitCode::FAILURE
        }
    }
}

/// Prints a config's diagnostics on stderr, secrets removed.
fn print_diagnostics(path: &std::path::Path, items: &[config::Diagnostic]) {
    let r = Redactor::of_file(path);
    for d in items {
        eprintln!("{}", r.text(&d.to_string()));
    }
}

/// Removes every secret from a parsed config, whatever TOML form each part was written
/// in (standard or inline tables, arrays of tables or inline arrays): secret-bearing keys
/// at any depth, endpoint credentials (each endpoint's `auth` becomes `none`), and URL
/// userinfo and query values in every string.
fn scrub(value: &mut toml::Value, parent: &str) {
    match value {
        toml::Value::Table(t) => {
            // A boolean or a number is never a secret (`forward_token = true`).
            t.retain(|k, v| {
                !(secret_name(k)
                    && matches!(
                        v,
                        toml::Value::String(_) | toml::Value::Table(_) | toml::Value::Array(_)
                    ))
            });
            if parent == "endpoints" {
                let mut none = toml::map::Map::new();
                none.insert("type".into(), toml::Value::String("none".into()));
                t.insert("auth".into(), toml::Value::Table(none));
                t.insert("trust_self_signed".into(), toml::Value::Boolean(false));
            }
            for (k, v) in t.iter_mut() {
                scrub(v, k);
            }
        }
        toml::Value::Array(items) => {
            for v in items {
                scrub(v, parent);
            }
        }
        toml::Value::String(s) if s.contains("://") => *s = scrub_url(s),
        _ => {}
    }
}

/// `portcullis export`: the config as it parses, with every secret removed. It is printed
/// from the parsed document, never by editing the text, so no comment and no spelling of
/// a secret survives.
fn export(path: PathBuf) -> anyhow::Result<()> {
    let text = config::secret::read_text(&path, config::secret::FileKind::Config)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let body = export_text(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    println!("# exported by `portcullis export`: secrets removed, endpoint auth set to none");
    print!("{body}");
    Ok(())
}

/// The export of a config's text: its parsed TOML with every secret removed.
pub fn export_text(text: &str) -> anyhow::Result<String> {
    let mut doc: toml::Value = toml::from_str(text)?;
    scrub(&mut doc, "");
    Ok(toml::to_string_pretty(&doc)?)
}

// === explain ===

/// The troubleshooting table of README.md, built into the binary: `explain` prints the fix
/// the operator documents for a reason (a test keeps the table complete).
const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));

/// The fix column of the troubleshooting row that names `reason`.
pub fn fix_for(reason: &str) -> Option<&'static str> {
    let start = README.find("### 401/403 troubleshooting")?;
    let needle = format!("`{reason}`");
    README[start..]
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with('|'))
        .find(|l| l.split('|').nth(2).is_some_and(|reasons| reasons.contains(&needle)))
        .and_then(|l| l.split('|').nth(3))
        .map(str::trim)
}

/// A request target as `explain` prints it: the path, and the query's names with their
/// values removed (`/hook?apiKey=REMOVED&token=REMOVED`). The target was parsed as a URI,
/// so it holds no control or non-ASCII byte.
fn target_text(uri: &http::Uri) -> String {
    let mut out = uri.path().to_string();
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(&config::redact::query_names(q));
    }
    out
}

/// A value of an unverified token, JSON-quoted, at most 80 characters.
fn claim_text(v: &serde_json::Value) -> String {
    let t = v.to_string();
    match t.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t,
    }
}

/// Where credentials are, without their secrets. A user part of Basic is shown only when
/// it is a configured user or API key id (`known`): otherwise it may be a secret typed in
/// the wrong field. An `Authorization` value is never shown, nor a scheme unless the
/// value has the `scheme credentials` form and the scheme is a short token.
fn credentials_found(parts: &http::request::Parts, known: &dyn Fn(&str) -> bool) -> Vec<String> {
    use base64::Engine;
    let mut found = Vec::new();
    for v in parts.headers.get_all(http::header::AUTHORIZATION) {
        let b = v.as_bytes();
        let (scheme, rest) = match b.iter().position(|c| *c == b' ') {
            Some(i) => (&b[..i], b[i + 1..].trim_ascii()),
            None => (b, &b""[..]),
        };
        let what = if scheme.eq_ignore_ascii_case(b"basic") {
            match base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
            {
                Some(text) => match text.split_once(':') {
                    Some((user, _)) if known(user) => {
                        format!("Authorization: Basic, user part `{user}` (a user for basic, or a key id for api_key)")
                    }
                    Some(_) => "Authorization: Basic, user part not a configured user or key id (not shown: it may be a secret in the wrong field)".into(),
                    None => "Authorization: Basic, but no `:` between user and secret".into(),
                },
                None => "Authorization: Basic, but not base64 of UTF-8 text".into(),
            }
        } else if scheme.eq_ignore_ascii_case(b"bearer") {
            let claims = rest
                .split(|c| *c == b'.')
                .nth(1)
                .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
                .and_then(|j| serde_json::from_slice::<serde_json::Value>(&j).ok());
            match claims {
                Some(c) => format!(
                    "Authorization: Bearer, a JWT with iss={} sub={} aud={} exp={}",
                    claim_text(&c["iss"]),
                    claim_text(&c["sub"]),
                    claim_text(&c["aud"]),
                    claim_text(&c["exp"])
                ),
                None => "Authorization: Bearer, an opaque token".into(),
            }
        } else if !rest.is_empty()
            && (1..=20).contains(&scheme.len())
            && scheme.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        {
            format!(
                "Authorization: scheme `{}` (not one Portcullis reads)",
                String::from_utf8_lossy(scheme)
            )
        } else {
            "Authorization: a value without a scheme (not shown; Portcullis reads Basic and Bearer)".into()
        };
        found.push(what);
    }
    if let Some(q) = parts.uri.query() {
        let keys = url::form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k == "apiKey")
            .count();
        if keys > 0 {
            found.push(format!("?apiKey= in the query ({keys} value(s))"));
        }
    }
    found
}

/// `portcullis explain`. Nothing it prints quotes what came from the request beyond the
/// path, the query's names, configured user and key names and a JWT's public claims:
/// not the query's values, an `Authorization` or other header's value, the URL's user
/// info, nor (in errors) the arguments themselves.
fn explain(path: PathBuf, client: std::net::IpAddr, headers: &[String], method: &str, url: &str) -> ExitCode {
    let fail = |m: String| {
        eprintln!("portcullis: {m}");
        ExitCode::FAILURE
    };
    let loaded = match config::load(&path) {
        Ok(l) => l,
        Err(errors) => {
            print_diagnostics(&path, &errors.0);
            return ExitCode::FAILURE;
        }
    };
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            return fail(format!(
                "the URL argument is not a URL ({e}); it is not shown, it may hold secrets"
            ))
        }
    };
    let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        return fail("the METHOD argument is not an HTTP method (the arguments are METHOD then URL)".into());
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()));
    for (n, h) in headers.iter().enumerate() {
        let Some((name, value)) = h.split_once(':') else {
            return fail(format!(
                "header argument {} is not `Name: value` (not shown: it may hold a secret)",
                n + 1
            ));
        };
        builder = builder.header(name.trim(), value.trim());
    }
    // The Host a client would send: the URL's host and port, never its user info.
    if let Some(a) = uri.authority() {
        let host = match a.port() {
            Some(p) => format!("{}:{p}", a.host()),
            None => a.host().to_string(),
        };
        builder = builder.header(http::header::HOST, host);
    }
    let (parts, ()) = match builder.body(()) {
        Ok(r) => r.into_parts(),
        Err(e) => return fail(format!("cannot form the request: {e}")),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the tokio runtime: {e}")),
    };
    let names: std::collections::HashSet<String> = loaded
        .config
        .users
        .iter()
        .map(|u| u.name.clone())
        .chain(loaded.config.api_keys.iter().map(|k| k.key.clone()))
        .collect();
    let known = |n: &str| names.contains(n);
    let found = credentials_found(&parts, &known);
    let (method, target) = (parts.method.clone(), target_text(&parts.uri));
    let result = rt.block_on(async move {
        let state = crate::state::State::new(loaded.config).map_err(|e| e.to_string())?;
        let gw = state.gateway();
        Ok::<_, String>(crate::inbound::explain(&gw, parts, client).await)
    });
    let e = match result {
        Ok(e) => e,
        Err(m) => return fail(Redactor::of_file(&path).text(&m)),
    };
    println!("request      {method} {target} from {client}");
    match &e.route {
        Some((plan, integration, pattern, methods)) => println!(
            "route        plan `{plan}`, integration `{integration}` (path `{pattern}`, methods {})",
            methods.join(", ")
        ),
        None => println!("route        none"),
    }
    if !e.methods.is_empty() {
        let m: Vec<&str> = e.methods.iter().map(|m| m.as_str()).collect();
        println!("auth         {}", m.join(", "));
    }
    if found.is_empty() {
        println!("credentials  none found");
    }
    for f in &found {
        println!("credentials  {f}");
    }
    match (&e.principal, &e.named) {
        (Some(p), _) => println!(
            "principal    `{}` by {}, roles [{}]",
            p.user,
            p.method.as_str(),
            p.roles.join(", ")
        ),
        (None, Some((who, how))) if known(who) => println!("principal    `{who}` by {}", how.as_str()),
        (None, Some((_, how))) => println!(
            "principal    not a configured user or key (not shown: it may be a mistyped secret) by {}",
            how.as_str()
        ),
        (None, None) => {}
    }
    match &e.decision {
        Ok(upstream) => {
            println!("decision     allowed: forwarded to {upstream}");
            ExitCode::SUCCESS
        }
        Err((status, reason, message)) => {
            println!("decision     {status} {reason}: {message}");
            if let Some(fix) = fix_for(reason) {
                println!("fix          {fix}");
            }
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod log_tests {
    /// Whatever a call site passes (`%Display` of peer text, the message itself, a span
    /// field), the text log writes one line without control characters.
    #[test]
    fn text_log_escapes_every_value() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .fmt_fields(super::text_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let evil = "x\nFORGED line\x1b[31m\u{2028}";
            let span = tracing::info_span!("s", peer = %evil);
            let _in = span.enter();
            tracing::warn!(display = %evil, debug = ?evil, text = evil, "message {evil}");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.ends_with('\n'));
        assert!(!out.trim_end().contains(crate::util::needs_escape), "{out:?}");
        assert!(out.contains("message x\\nFORGED line\\u{1b}[31m\\u{2028}"), "{out}");
        assert!(out.contains("display=x\\nFORGED"), "{out}");
        assert!(out.contains("debug=\"x\\nFORGED"), "{out}");
        assert!(out.contains("text=\"x\\nFORGED"), "{out}");
        assert!(out.contains("peer=x\\nFORGED"), "{out}");
    }
}
