//! `portcullis health`: ask a running gateway's admin listener whether it is alive or
//! ready, reading as little of the config as possible.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;

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
fn admin_address(path: &std::path::Path) -> anyhow::Result<Option<std::net::SocketAddr>> {
    // The same file rules as `serve`: a FIFO, a device or a huge file never hangs or
    // fills the health check that runs every few seconds.
    let text = config::secret::read_text(path, config::secret::FileKind::Config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let parse = |s: &str| {
        s.parse::<std::net::SocketAddr>().map_err(|_| {
            anyhow::anyhow!(
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
                Some(_) => Err(anyhow::anyhow!("{}: [admin] address is not a string", path.display())),
            },
            Some(_) => Err(anyhow::anyhow!("{}: `admin` is not a table", path.display())),
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
                anyhow::anyhow!(
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
pub(super) fn run(path: PathBuf, admin: Option<std::net::SocketAddr>, ready: bool) -> ExitCode {
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
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
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
