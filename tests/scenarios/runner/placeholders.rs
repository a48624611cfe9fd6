//! `{placeholders}` in paths, contents, arguments, environment, patterns and JSON
//! expectations (the list is in scenarios/README.md). `{{`/`}}` are literal braces;
//! an unknown name is an error.

use sha2::{Digest, Sha256};

use super::{Proc, Runner};
use crate::model::Server;

impl Runner {
    pub(super) fn store_of(&self, s: &Server) -> Result<String, String> {
        match &s.store {
            Some(p) => self.expand(p),
            None => Ok(self.default_store()),
        }
    }

    pub(super) fn default_store(&self) -> String {
        self.dir("home")
            .join(".memtomem/memtomem.db")
            .to_string_lossy()
            .into_owned()
    }

    pub(super) fn expand(&self, s: &str) -> Result<String, String> {
        self.expand_with(s, None)
    }

    pub(super) fn expand_all(&self, v: &[String]) -> Result<Vec<String>, String> {
        v.iter().map(|a| self.expand(a)).collect()
    }

    /// `upgrader_marker` stands for `{upgrader}`, only known in the upgrader's own
    /// process (files with `when = "upgrader-start"`).
    pub(super) fn expand_with(
        &self,
        s: &str,
        upgrader_marker: Option<&str>,
    ) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let c = rest.as_bytes()[i];
            if rest[i + 1..].starts_with(c as char) {
                out.push(c as char);
                rest = &rest[i + 2..];
                continue;
            }
            if c == b'}' {
                return Err(format!("unbalanced '}}' in {s:?}"));
            }
            let Some(j) = rest[i..].find('}') else {
                return Err(format!("unterminated placeholder in {s:?}"));
            };
            let key = &rest[i + 1..i + j];
            out.push_str(&self.placeholder(key, upgrader_marker)?);
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn placeholder(&self, key: &str, upgrader_marker: Option<&str>) -> Result<String, String> {
        let path = |k: &str| self.dirs.get(k).map(|p| p.to_string_lossy().into_owned());
        let (head, arg) = match key.split_once(':') {
            Some((h, a)) => (h, Some(a)),
            None => (key, None),
        };
        let find = |name: &str| -> Result<&Proc, String> {
            self.proc_named(name).ok_or_else(|| {
                format!("{{{key}}}: no server or bystander named {name:?} (started so far)")
            })
        };
        let spec = |name: &str| -> Result<&Server, String> {
            find(name)?
                .spec
                .as_ref()
                .ok_or(format!("{{{key}}}: {name} is not a server"))
        };
        Ok(match (head, arg) {
            ("sandbox", None) => self.sandbox.to_string_lossy().into_owned(),
            ("home" | "runtime" | "tools" | "toolbin" | "bin" | "events", None) => {
                path(head).unwrap()
            }
            ("store", None) => self.default_store(),
            ("digest", None) => digest(&self.default_store()),
            ("digest", Some(name)) => digest(&self.store_of(spec(name)?)?),
            ("store", Some(name)) => self.store_of(spec(name)?)?,
            ("pid", Some(name)) => find(name)?.pid().to_string(),
            ("launcher", Some(name)) => find(name)?.spawned.to_string(),
            ("pgid", Some(name)) => find(name)?.pgid.to_string(),
            ("self", None) => std::process::id().to_string(),
            ("upgrader", None) => match upgrader_marker {
                Some(m) => m.to_string(),
                None => {
                    return Err(
                        "{upgrader} is only known in files with when = \"upgrader-start\"".into(),
                    )
                }
            },
            ("stamp", None) => iso_offset(0),
            ("old_stamp", None) => iso_offset(-3600),
            ("future_stamp", None) => iso_offset(3600),
            ("run_id", None) => self.cfg.run_id.clone(),
            _ => return Err(format!("unknown placeholder {{{key}}}")),
        })
    }
}

/// The pid-file digest of a store path: the first 16 hex of its SHA-256.
pub fn digest(path: &str) -> String {
    let h = Sha256::digest(path.as_bytes());
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Now plus `secs`, as Python's `isoformat()` with microseconds.
fn iso_offset(secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let t = time::OffsetDateTime::from_unix_timestamp(now.as_secs() as i64 + secs).unwrap()
        + time::Duration::microseconds(now.subsec_micros() as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}
