//! The operator documents cannot drift from the code: every metric defined in
//! `src/metrics.rs` is in `docs/metrics.md`, and nothing else is.

use std::collections::BTreeSet;

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("portcullis_") {
        let tail = &rest[i..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Only names that follow a quote or a backtick are metric names.
        let before = rest[..i].chars().last();
        if matches!(before, Some('"') | Some('`')) && name.len() > "portcullis_".len() {
            out.insert(name.clone());
        }
        rest = &tail[name.len().max(1)..];
    }
    out
}

#[test]
fn every_metric_is_documented_and_nothing_else() {
    let root = env!("CARGO_MANIFEST_DIR");
    let code = metric_names(&std::fs::read_to_string(format!("{root}/src/metrics.rs")).unwrap());
    let doc = metric_names(&std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap());
    assert!(code.len() >= 18, "{code:?}");
    let missing: Vec<_> = code.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&code).collect();
    assert!(missing.is_empty(), "metrics missing from docs/metrics.md: {missing:?}");
    assert!(
        stale.is_empty(),
        "docs/metrics.md lists metrics the code does not have: {stale:?}"
    );
}

#[test]
fn alerts_use_only_real_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let code = metric_names(&std::fs::read_to_string(format!("{root}/src/metrics.rs")).unwrap());
    let alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    for word in alerts.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(base) = word.strip_prefix("portcullis_") {
            let known = code.iter().any(|m| {
                word == m
                    || [format!("{m}_bucket"), format!("{m}_sum"), format!("{m}_count")].contains(&word.to_string())
            });
            assert!(known, "alerts.yml uses unknown metric portcullis_{base}");
        }
    }
}
