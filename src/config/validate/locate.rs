//! Where a key is: serde_ignored's paths (unknown keys) as dotted names and as positions
//! in the document.

use super::Span;
#[derive(Debug, Clone)]
pub(in crate::config) enum Segment {
    Key(String),
    Index(usize),
}

pub(in crate::config) fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path as P;
    let mut out = match path {
        P::Root => return Vec::new(),
        P::Seq { parent, .. }
        | P::Map { parent, .. }
        | P::Some { parent }
        | P::NewtypeStruct { parent }
        | P::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        P::Seq { index, .. } => out.push(Segment::Index(*index)),
        // `toml::Spanned` deserializes through a private map; its keys are not the user's.
        P::Map { key, .. } if !key.starts_with("$__serde_spanned_private") => out.push(Segment::Key(key.clone())),
        _ => {}
    }
    out
}

pub(in crate::config) fn dotted(segs: &[Segment]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

pub(super) fn locate(root: &toml_edit::Item, segs: &[Segment]) -> Option<Span> {
    let mut item = root;
    let mut span = None;
    for seg in segs {
        match seg {
            Segment::Key(k) => {
                let (key, next) = match item {
                    toml_edit::Item::Table(t) => t.get_key_value(k)?,
                    toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.get_key_value(k)?,
                    _ => return span,
                };
                span = key.span().or(span);
                item = next;
            }
            Segment::Index(i) => match item {
                toml_edit::Item::ArrayOfTables(a) => {
                    let t = a.get(*i)?;
                    span = t.span().or(span);
                    // Array-of-tables entries are tables; continue through a temporary view.
                    return locate_in(t, segs_after(segs, seg)).or(span);
                }
                toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
                    let v = a.get(*i)?;
                    span = v.span().or(span);
                    if let toml_edit::Value::InlineTable(t) = v {
                        return locate_in(t, segs_after(segs, seg)).or(span);
                    }
                    return span;
                }
                _ => return span,
            },
        }
    }
    span
}

fn segs_after<'a>(segs: &'a [Segment], seg: &Segment) -> &'a [Segment] {
    let pos = segs
        .iter()
        .position(|s| std::ptr::eq(s, seg))
        .map_or(segs.len(), |p| p + 1);
    &segs[pos..]
}

fn locate_in(t: &dyn toml_edit::TableLike, segs: &[Segment]) -> Option<Span> {
    let Some((Segment::Key(k), rest)) = segs.split_first() else {
        return None;
    };
    let (key, item) = t.get_key_value(k)?;
    if rest.is_empty() {
        return key.span();
    }
    locate(item, rest).or(key.span())
}
