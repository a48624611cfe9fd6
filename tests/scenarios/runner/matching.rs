//! Matchers for the typed expectations: JSON subsets, event patterns (and what they mean
//! for another upgrader), path globs, exit-code classes.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::evidence::Ev;
use super::Runner;
use crate::model::{JsonWant, Pattern};

/// Keys of mm-upgrade's JSON that upstream `mm upgrade` does not have; not compared in
/// differential mode.
const OURS_ONLY_KEYS: &[&str] = &[
    "exit_code",
    "downtime_ms",
    "remaining",
    "stops",
    "skipped",
    "staged",
    "proof",
    "switch_ms",
    "rolled_back",
    "recovered",
    "up_to_date",
];

/// Subset match of `got` against `want` (rules on [`JsonWant`]); every mismatch is
/// pushed to `errs` with its JSON path. `diff`: against another upgrader, message texts
/// (`~…`) and mm-upgrade-only top-level keys are not compared.
pub(super) fn json_match(
    r: &Runner,
    want: &JsonWant,
    got: &Value,
    path: &str,
    errs: &mut Vec<String>,
    diff: bool,
) {
    match want {
        JsonWant::Object(members) => {
            let Some(g) = got.as_object() else {
                errs.push(format!("{path}: expected an object, got {got}"));
                return;
            };
            for (k, w) in members {
                if diff && path.is_empty() && OURS_ONLY_KEYS.contains(&k.as_str()) {
                    continue;
                }
                let p = format!("{path}.{k}");
                match (w, g.get(k)) {
                    (JsonWant::Absent, None) => {}
                    (JsonWant::Absent, Some(v)) => {
                        errs.push(format!("{p}: expected absent, got {v}"))
                    }
                    (_, None) => errs.push(format!("{p}: missing (expected {w:?})")),
                    (_, Some(v)) => json_match(r, w, v, &p, errs, diff),
                }
            }
        }
        JsonWant::Array { at_least, items } => {
            let Some(gs) = got.as_array() else {
                errs.push(format!("{path}: expected an array, got {got}"));
                return;
            };
            if (!at_least && items.len() != gs.len()) || items.len() > gs.len() {
                errs.push(format!(
                    "{path}: expected {}{} elements, got {}: {got}",
                    if *at_least { "at least " } else { "" },
                    items.len(),
                    gs.len()
                ));
                return;
            }
            let mut used = vec![false; gs.len()];
            for w in items {
                let hit = (0..gs.len()).find(|&i| {
                    let mut e = vec![];
                    !used[i] && {
                        json_match(r, w, &gs[i], path, &mut e, diff);
                        e.is_empty()
                    }
                });
                match hit {
                    Some(i) => used[i] = true,
                    None => {
                        errs.push(format!("{path}: no element matches {w:?} in {got}"));
                        return;
                    }
                }
            }
        }
        JsonWant::Absent => errs.push(format!("{path}: \"<absent>\" outside an object")),
        JsonWant::Any => {}
        JsonWant::NonEmpty => {
            let empty = match got {
                Value::String(g) => g.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                Value::Null => true,
                _ => false,
            };
            if empty {
                errs.push(format!("{path}: expected something, got {got}"));
            }
        }
        // A message text: not compared against another upgrader (its wording differs).
        JsonWant::Contains(_) if diff => {}
        JsonWant::Contains(t) | JsonWant::Text(t) => {
            let t = match r.expand(t) {
                Ok(t) => t,
                Err(e) => {
                    errs.push(format!("{path}: {e}"));
                    return;
                }
            };
            let got_text = match got {
                Value::String(g) => g.clone(),
                other => other.to_string(),
            };
            let ok = match want {
                JsonWant::Contains(_) => got_text.to_lowercase().contains(&t.to_lowercase()),
                _ => got_text == t && !got.is_null(),
            };
            if !ok {
                errs.push(format!("{path}: expected {want:?} ({t:?}), got {got}"));
            }
        }
        JsonWant::Number(n) => {
            if got.as_f64() != Some(*n) {
                errs.push(format!("{path}: expected {n}, got {got}"));
            }
        }
        JsonWant::Bool(b) => {
            if got.as_bool() != Some(*b) {
                errs.push(format!("{path}: expected {b}, got {got}"));
            }
        }
    }
}

/// A pattern as written, or its counterpart for another upgrader (differential mode):
/// mm-upgrade's `switched`/`installed` is its in-place `uv:install`; mm-upgrade's other
/// events and the stage call have none (None: not checked).
pub(super) fn pattern_for(pat: &Pattern, diff: bool) -> Option<Pattern> {
    if !diff {
        return Some(pat.clone());
    }
    match (pat.source.as_str(), pat.event.as_str()) {
        ("mm", "switched" | "installed") => Some(Pattern {
            source: "uv".into(),
            event: "install".into(),
            detail: None,
        }),
        ("mm", _) | ("uv", "stage") => None,
        _ => Some(pat.clone()),
    }
}

/// `source:event[:detail]`; `*` as source or event matches any; `detail` (already
/// expanded) matches any string or number in the record (argv elements included).
pub(super) fn ev_matches(ev: &Ev, pat: &Pattern, detail: Option<&str>) -> bool {
    if pat.source != "*" && pat.source != ev.source {
        return false;
    }
    if pat.event != "*" && pat.event != ev.event {
        return false;
    }
    match detail {
        None => true,
        Some(d) => {
            let mut vals = vec![];
            flatten(&ev.fields, &mut vals);
            vals.iter().any(|v| v == d)
        }
    }
}

fn flatten(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        Value::Object(o) => o.values().for_each(|x| flatten(x, out)),
        _ => {}
    }
}

/// Paths matching `pat`, where `*` in any component matches any run of characters.
/// Does not follow symlinks when deciding existence (a dangling link exists).
pub(super) fn glob(pat: &str) -> Vec<PathBuf> {
    let mut cur = vec![PathBuf::from("/")];
    for comp in Path::new(pat).components().skip(1) {
        let c = comp.as_os_str().to_string_lossy().into_owned();
        let mut next = vec![];
        for base in &cur {
            if c.contains('*') {
                if let Ok(rd) = fs::read_dir(base) {
                    for e in rd.flatten() {
                        if wild(&c, &e.file_name().to_string_lossy()) {
                            next.push(e.path());
                        }
                    }
                }
            } else {
                let p = base.join(&c);
                if fs::symlink_metadata(&p).is_ok() {
                    next.push(p);
                }
            }
        }
        cur = next;
    }
    cur
}

fn wild(pat: &str, s: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == s;
    }
    let mut rest = s;
    if !rest.starts_with(parts[0]) {
        return false;
    }
    rest = &rest[parts[0].len()..];
    for (i, p) in parts.iter().enumerate().skip(1) {
        if i == parts.len() - 1 {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(j) => rest = &rest[j + p.len()..],
            None => return false,
        }
    }
    true
}

/// Exit codes compared by class against another upgrader.
pub(super) fn exit_class(code: Option<i32>) -> &'static str {
    match code {
        Some(0) => "ok",
        Some(2) => "usage",
        Some(_) => "failure",
        None => "signal",
    }
}

/// A TOML document (a receipt) as JSON, to match it with the JSON rules.
pub(super) fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::from(s.as_str()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}
