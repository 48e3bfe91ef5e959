//! The layering rule of ARCHITECTURE.md, checked mechanically: every top-level module of
//! the crate has a layer, and every `crate::` path in a module names a module of a lower
//! layer. A new module without a layer, or an import that points sideways or up, fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer of each top-level module, as in ARCHITECTURE.md.
const LAYERS: &[(&str, u32)] = &[
    ("util", 0),
    ("path", 0),
    ("policy", 0),
    ("headers", 0),
    ("metrics", 0),
    ("error", 1),
    ("config", 2),
    ("upstream", 3),
    ("server", 3),
    ("shared", 3),
    ("telemetry", 3),
    ("auth", 4),
    ("assertion", 5),
    ("authz", 5),
    ("route", 5),
    ("egress", 6),
    ("gateway", 7),
    ("inbound", 8),
    ("state", 9),
    ("admin", 10),
    ("reload", 10),
    ("run", 11),
    ("cli", 12),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate modules a source text names through `crate::`: plain paths and the members
/// of `use crate::{a, b::c}` groups. Comments are skipped.
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn imports_only_point_down() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&own) = layers.get(top.as_str()) else {
            problems.push(format!(
                "module `{top}` has no layer in ARCHITECTURE.md / tests/architecture.rs"
            ));
            continue;
        };
        for used in imports(&std::fs::read_to_string(&f).unwrap()) {
            if used == top {
                continue;
            }
            match layers.get(used.as_str()) {
                Some(&l) if l < own => {}
                Some(&l) => problems.push(format!(
                    "{}: `{top}` (layer {own}) imports `{used}` (layer {l}): imports must point down",
                    rel.display()
                )),
                None => problems.push(format!("{}: imports unknown module `{used}`", rel.display())),
            }
        }
    }
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
}

#[test]
fn the_import_reader_sees_groups_and_skips_comments() {
    let found = imports("use crate::{a, b::c};\nuse crate::d::E; // crate::zz\nfn f() { crate::e::g(); }");
    assert_eq!(found.into_iter().collect::<Vec<_>>(), vec!["a", "b", "d", "e"]);
}

#[test]
fn every_layer_is_documented() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).unwrap();
    for (name, _) in LAYERS {
        assert!(doc.contains(name), "ARCHITECTURE.md does not mention `{name}`");
    }
}
