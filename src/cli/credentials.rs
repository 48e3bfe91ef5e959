//! The subcommands that make credentials: `hash-password` (argon2id PHC string),
//! `keygen` (an API key and secret for one integration) and `urlkey` (a URL key).

use std::io::Read;

use anyhow::Context;
use base64::Engine;

use crate::config::SecretHash;

pub(super) fn hash_password() -> anyhow::Result<()> {
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

pub(super) fn keygen(user: &str, integration: &str) -> anyhow::Result<()> {
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

pub(super) fn urlkey(user: &str) -> anyhow::Result<()> {
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
