//! `portcullis endpoint test NAME`: fetch the endpoint's token (OAuth2) or send it one
//! request, and show the certificate it presented; nothing it sends is printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::load_config;
use crate::config::{self, redact::Redactor};

pub(super) fn run(path: PathBuf, name: &str) -> ExitCode {
    let loaded = match load_config(&path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let redactor = redactor(&path, &loaded.config, name);
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
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
    let ok = rt.block_on(probe(endpoint, name, &redactor));
    print_certificate(endpoint);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The config file's secrets, and what the endpoint sends, resolved (`{ env }` and
/// `{ file }` too) with its Basic credentials: never printed, even when the target
/// echoes them or an error quotes them.
fn redactor(path: &Path, config: &config::Config, name: &str) -> Redactor {
    let mut redactor = Redactor::of_file(path);
    for e in config.endpoints.iter().filter(|e| e.name == name) {
        match &e.auth {
            config::EndpointAuth::Basic { username, password, .. } => {
                redactor.add(password.expose_str());
                redactor.add(config::Secret::basic(username, password).expose_str());
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
    redactor
}

/// The token fetch (OAuth2) or one request, and what came of it; `true` when it worked.
async fn probe(endpoint: &crate::egress::Endpoint, name: &str, redactor: &Redactor) -> bool {
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
}

/// What the certificate is, so the operator can decide on trust_self_signed or a pin.
fn print_certificate(endpoint: &crate::egress::Endpoint) {
    if let Some(der) = endpoint.verifier.seen_cert.lock().ok().and_then(|s| s.clone()) {
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
}
