//! The command line of the contract: `serve`, `check`, `hash-password`, `keygen`,
//! `urlkey`, `endpoint test`, `health`, `explain` and `export`.
//!
//! This file holds the clap definitions, [`run`], logging and the one step every
//! subcommand that reads a config takes (`load_config`: the config, or its diagnostics
//! printed without secrets). Each subcommand lives in a file of its own. `anyhow` is
//! used here and nowhere else in the crate.

mod check;
mod credentials;
mod endpoint_test;
mod explain;
mod export;
mod fixes;
mod health;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::{self, redact::Redactor};

pub use export::export_text;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version = crate::metrics::build::LONG_VERSION,
    about = "An authentication gateway for integration services"
)]
struct Cli {
    /// Accepted before the subcommand too (`portcullis --log-format json serve`), as
    /// `serve --log-format`; the other subcommands print plain text and take no log format.
    #[arg(long, value_enum, hide = true)]
    log_format: Option<LogFormat>,
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
        /// How the gateway writes its log lines (access, egress, events): one text line or
        /// one JSON object per event, on stdout. Filter with PORTCULLIS_LOG.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate the config: exit 0, or 1 with every error as FILE:LINE:COL: message.
    Check {
        /// Config file to check; defaults to $PORTCULLIS_CONFIG, else config/portcullis.toml.
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
        /// The user the key authenticates as (a `[[users]]` name).
        #[arg(long)]
        user: String,
        /// The one integration the key is good for, as PLAN/INTEGRATION.
        #[arg(long)]
        integration: String,
        /// A config to check `--user` and `--integration` against (refused if it has
        /// no such user or integration); without it the names are not checked.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Make a URL key for a user.
    Urlkey {
        /// The user the key authenticates as (a `[[users]]` name).
        #[arg(long)]
        user: String,
        /// A config to check `--user` against (refused if it has no such user); without
        /// it the name is not checked.
        #[arg(long, short)]
        config: Option<PathBuf>,
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
        /// Ask `/readyz` (serving traffic) instead of `/healthz` (alive).
        #[arg(long)]
        ready: bool,
    },
    /// Say what the gateway would do with one request, without starting a server: the
    /// route, the auth methods, the credentials found, and the decision with its reason
    /// and the fix. Passwords are checked for real (argon2id); secrets are never printed.
    Explain {
        /// Config whose routes and credentials decide; defaults to $PORTCULLIS_CONFIG,
        /// else config/portcullis.toml.
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
        /// Config to print; defaults to $PORTCULLIS_CONFIG, else config/portcullis.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script: `source <(portcullis completions bash)`, or save it
    /// where your shell loads completions from.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum EndpointCommand {
    /// "Test Authentication": fetch a token (OAuth2) or send one request; exit 0 or 1.
    Test {
        /// The endpoint's name.
        name: String,
        /// Config that defines the endpoint; defaults to $PORTCULLIS_CONFIG, else
        /// config/portcullis.toml.
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
    if cli.log_format.is_some() && !matches!(cli.command, Command::Serve { .. }) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--log-format applies to `serve` only: the other subcommands print plain text",
            )
            .exit();
    }
    match cli.command {
        Command::Serve { config, log_format } => serve::run(
            config_path(config),
            log_format.or(cli.log_format).unwrap_or(LogFormat::Text),
        ),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "portcullis", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Check { config, strict } => check::run(config_path(config), strict),
        Command::HashPassword => exit(credentials::hash_password()),
        Command::Keygen {
            user,
            integration,
            config,
        } => match known_names(config.as_deref(), &user, Some(&integration)) {
            Ok(()) => exit(credentials::keygen(&user, &integration)),
            Err(code) => code,
        },
        Command::Urlkey { user, config } => match known_names(config.as_deref(), &user, None) {
            Ok(()) => exit(credentials::urlkey(&user)),
            Err(code) => code,
        },
        Command::Endpoint {
            command: EndpointCommand::Test { name, config },
        } => endpoint_test::run(config_path(config), &name),
        Command::Export { config } => exit(export::run(config_path(config))),
        Command::Health { config, admin, ready } => health::run(config_path(config), admin, ready),
        Command::Explain {
            config,
            client_ip,
            headers,
            method,
            url,
        } => explain::run(config_path(config), client_ip, &headers, &method, &url),
    }
}

/// A subcommand's error, printed with its causes, as its exit code.
fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config at `path`, checked; or its diagnostics printed on stderr without secrets,
/// and the exit code the subcommand ends with. `check`, `serve`, `explain` and `endpoint
/// test` all load through here.
fn load_config(path: &Path) -> Result<config::Loaded, ExitCode> {
    config::load(path).map_err(|errors| {
        print_diagnostics(path, &errors.0);
        ExitCode::FAILURE
    })
}

/// With `--config`, the user (and the integration, PLAN/INTEGRATION) a credential is made
/// for must be in it: a key for a name no config has would never work.
fn known_names(config: Option<&Path>, user: &str, integration: Option<&str>) -> Result<(), ExitCode> {
    let Some(path) = config else {
        return Ok(());
    };
    let loaded = load_config(path)?;
    let c = &loaded.config;
    let mut missing = Vec::new();
    if !c.users.iter().any(|u| u.name == user) {
        missing.push(format!("no [[users]] entry is named `{}`", crate::util::Escaped(user)));
    }
    if let Some(want) = integration {
        let found = c
            .plans
            .iter()
            .any(|p| p.integrations.iter().any(|i| format!("{}/{}", p.name, i.name) == want));
        if !found {
            missing.push(format!(
                "no integration is `{}` (PLAN/INTEGRATION)",
                crate::util::Escaped(want)
            ));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    for m in missing {
        eprintln!("portcullis: {}: {m}", path.display());
    }
    Err(ExitCode::FAILURE)
}

/// The single-threaded runtime of the subcommands that make a few requests (`endpoint
/// test`, `health`, `explain`); or the failure, printed.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("portcullis: cannot start the tokio runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Prints a config's diagnostics on stderr, secrets removed.
fn print_diagnostics(path: &std::path::Path, items: &[config::Diagnostic]) {
    let r = Redactor::of_file(path);
    for d in items {
        eprintln!("{}", r.text(&d.to_string()));
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

#[cfg(test)]
mod manners {
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand says what it does (`--help`).
    #[test]
    fn every_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no description)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "portcullis", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
