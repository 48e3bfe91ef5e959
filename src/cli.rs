//! The command line of the contract: `serve`, `check`, `hash-password`, `keygen`, `urlkey`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};

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
        Command::Check { config } => return check(config_path(config)),
        Command::HashPassword => hash_password(),
        Command::Keygen { user, integration } => keygen(&user, &integration),
        Command::Urlkey { user } => urlkey(&user),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: PathBuf) -> ExitCode {
    match config::load(&path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn serve(path: PathBuf, format: LogFormat) -> anyhow::Result<()> {
    init_logging(format);
    let loaded = config::load(&path).map_err(|e| anyhow::anyhow!("{e}\nconfig refused; nothing started"))?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let config = loaded.config;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = config.runtime.worker_threads {
        rt.worker_threads(n);
    }
    let rt = rt.build().context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let bound = crate::server::Bound::bind(&config)?;
        let state = crate::gateway::State::new(config).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        let (trigger, shutdown) = crate::server::shutdown::channel();
        tokio::spawn(async move {
            crate::server::shutdown::signal().await;
            tracing::info!("shutdown signal received; draining");
            trigger.fire();
        });
        crate::server::run(state, bound, shutdown).await;
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
