//! A JSON expectation (`[expect] json`, `receipt`), typed at load time: what each string
//! means is decided once, and a misspelt matcher (`"<nonempy>"`, a `"..."` that is not
//! first) fails the scenario file instead of being compared as text.

use serde::Deserialize;

/// Subset match: objects by key; arrays of equal length in any order (a leading
/// `"..."`: at least these); strings are exact (placeholders expanded; a string also
/// matches a number that prints the same, so `"{pid:main}"` matches a pid) unless one
/// of the matchers below.
#[derive(Clone, Debug, PartialEq)]
pub enum JsonWant {
    Object(Vec<(String, JsonWant)>),
    Array {
        at_least: bool,
        items: Vec<JsonWant>,
    },
    /// `"<absent>"`: the key must be missing (object members only).
    Absent,
    /// `"<any>"`.
    Any,
    /// `"<nonempty>"`: not null, not `""`, `[]` or `{}`.
    NonEmpty,
    /// `"~text"`: a message containing this, case-insensitive (placeholders expanded).
    Contains(String),
    Text(String),
    Number(f64),
    Bool(bool),
}

impl JsonWant {
    fn from_toml(v: &toml::Value, member: bool) -> Result<JsonWant, String> {
        Ok(match v {
            toml::Value::String(s) => match s.as_str() {
                "<absent>" if member => JsonWant::Absent,
                "<absent>" => return Err("\"<absent>\" is only for object members".into()),
                "<any>" => JsonWant::Any,
                "<nonempty>" => JsonWant::NonEmpty,
                "..." => return Err("\"...\" is only the first element of an array".into()),
                _ if s.starts_with('<') && s.ends_with('>') && !s.contains(' ') => {
                    return Err(format!(
                        "{s:?}: unknown matcher (\"<absent>\", \"<any>\", \"<nonempty>\")"
                    ))
                }
                _ => match s.strip_prefix('~') {
                    Some(t) => JsonWant::Contains(t.into()),
                    None => JsonWant::Text(s.clone()),
                },
            },
            toml::Value::Integer(i) => JsonWant::Number(*i as f64),
            toml::Value::Float(f) => JsonWant::Number(*f),
            toml::Value::Boolean(b) => JsonWant::Bool(*b),
            toml::Value::Datetime(d) => JsonWant::Text(d.to_string()),
            toml::Value::Array(a) => {
                let at_least = a.first().and_then(toml::Value::as_str) == Some("...");
                let items = a[usize::from(at_least)..]
                    .iter()
                    .enumerate()
                    .map(|(i, x)| JsonWant::from_toml(x, false).map_err(|e| format!("[{i}]: {e}")))
                    .collect::<Result<_, _>>()?;
                JsonWant::Array { at_least, items }
            }
            toml::Value::Table(t) => JsonWant::Object(
                t.iter()
                    .map(|(k, x)| {
                        JsonWant::from_toml(x, true)
                            .map(|w| (k.clone(), w))
                            .map_err(|e| format!(".{k}: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

impl<'de> Deserialize<'de> for JsonWant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = toml::Value::deserialize(d)?;
        JsonWant::from_toml(&v, false).map_err(serde::de::Error::custom)
    }
}
