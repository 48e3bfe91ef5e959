//! `portcullis export`: the config with every secret removed.

use std::path::PathBuf;

use anyhow::Context;

use crate::config;
use crate::config::redact::{scrub_url, secret_name};

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
pub(super) fn run(path: PathBuf) -> anyhow::Result<()> {
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
