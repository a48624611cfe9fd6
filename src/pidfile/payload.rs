//! What a pid file says: `<pid>\n<port>\n<started>\n`, parsed as upstream
//! writes it, never yielding 0, -1 or 1 as a signal target.

use time::OffsetDateTime;

/// Payloads larger than this are oversized: metadata is discarded but the
/// lock is still probed.
pub const PAYLOAD_CAP: usize = 4096;

/// The positional fields of a pid payload: `<pid>\n<port>\n<started>\n`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Payload {
    /// The pid exactly as written, if it parses as an integer (may be 0 or
    /// negative: see [`Payload::signalable_pid`]).
    pub pid: Option<i64>,
    pub port: Option<i64>,
    pub started: Option<String>,
    /// Why there is no metadata (empty, oversize, non-UTF-8…), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

impl Payload {
    /// The pid if it may name a process we could ever signal: 2..=pid_max.
    /// 0 and negatives address process groups and 1 is init, so none of them
    /// is ever a target, whatever a file says.
    pub fn signalable_pid(&self) -> Option<i32> {
        match self.pid {
            Some(p) if p > 1 && p <= i32::MAX as i64 => Some(p as i32),
            _ => None,
        }
    }

    pub fn started_at(&self) -> Option<OffsetDateTime> {
        self.started.as_deref().and_then(parse_stamp)
    }
}

/// Python `int()` on one stripped line: optional sign, ASCII digits with
/// single underscores between them.
fn python_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let cleaned: String = digits.chars().filter(|c| *c != '_').collect();
    if !cleaned.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: i64 = cleaned.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Parse payload bytes the way upstream does (positional lines).
pub fn parse_payload(bytes: &[u8]) -> Payload {
    if bytes.len() > PAYLOAD_CAP {
        return Payload {
            unreadable: Some(format!("payload larger than {PAYLOAD_CAP} bytes")),
            ..Default::default()
        };
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Payload {
            unreadable: Some("payload is not UTF-8".into()),
            ..Default::default()
        };
    };
    if text.trim().is_empty() {
        return Payload {
            unreadable: Some("payload is empty".into()),
            ..Default::default()
        };
    }
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let pid = lines.first().and_then(|l| python_int(l));
    Payload {
        pid,
        port: lines.get(1).and_then(|l| python_int(l)),
        started: lines
            .get(2)
            .filter(|l| !l.is_empty())
            .map(|l| l.to_string()),
        unreadable: pid.is_none().then(|| "first line is not an integer".into()),
    }
}

/// Parse Python `isoformat()` stamps; a naive stamp is taken as UTC.
pub fn parse_stamp(s: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Iso8601;
    if let Ok(t) = OffsetDateTime::parse(s, &Iso8601::DEFAULT) {
        return Some(t);
    }
    time::PrimitiveDateTime::parse(s, &Iso8601::DEFAULT)
        .ok()
        .map(|p| p.assume_utc())
}

/// Python-style `isoformat()` of a UTC time, microseconds omitted when zero.
pub fn format_stamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    match t.microsecond() {
        0 => format!("{base}+00:00"),
        us => format!("{base}.{us:06}+00:00"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn server_payload_parses() {
        let p = parse_payload(b"8380\n\n2026-11-26T11:32:39.333969+00:00\n");
        assert_eq!(p.pid, Some(8380));
        assert_eq!(p.port, None);
        assert_eq!(p.signalable_pid(), Some(8380));
        assert!(p.started_at().is_some());
    }

    #[test]
    fn web_payload_has_port() {
        let p = parse_payload(b"10067\n18081\n2026-11-26T11:35:31.372762+00:00\n");
        assert_eq!((p.pid, p.port), (Some(10067), Some(18081)));
    }

    #[test]
    fn hostile_pids_are_never_signalable() {
        for raw in ["0", "-1", "1", "-4242", "+0", "99999999999"] {
            let p = parse_payload(format!("{raw}\n\n").as_bytes());
            assert_eq!(p.signalable_pid(), None, "{raw}");
        }
        assert_eq!(parse_payload(b"1_000\n").signalable_pid(), Some(1000));
    }

    #[test]
    fn unreadable_payloads() {
        assert!(parse_payload(b"").unreadable.is_some());
        assert!(parse_payload(b"garbage\n").unreadable.is_some());
        assert!(parse_payload(&[0xff, 0xfe, b'\n']).unreadable.is_some());
        assert!(parse_payload(&vec![b'1'; PAYLOAD_CAP + 1])
            .unreadable
            .is_some());
        assert_eq!(parse_payload(b"123").pid, Some(123));
    }

    #[test]
    fn stamps_with_and_without_fraction() {
        let a = parse_stamp("2026-11-26T11:32:39+00:00").unwrap();
        let b = parse_stamp("2026-11-26T11:32:39.000001+00:00").unwrap();
        assert!(b > a);
        assert_eq!(parse_stamp("2026-11-26T11:32:39"), Some(a));
        assert_eq!(format_stamp(a), "2026-11-26T11:32:39+00:00");
        assert_eq!(format_stamp(b), "2026-11-26T11:32:39.000001+00:00");
    }

    proptest! {
        #[test]
        fn parser_never_panics_and_never_yields_unsafe_pids(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let p = parse_payload(&bytes);
            if let Some(pid) = p.signalable_pid() {
                prop_assert!(pid > 1);
            }
        }

        #[test]
        fn stamp_roundtrip(secs in 0i64..4_000_000_000, us in 0u32..1_000_000) {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap().replace_microsecond(us).unwrap();
            prop_assert_eq!(parse_stamp(&format_stamp(t)), Some(t));
        }
    }

    // Own process (rusty-fork) for what takes real flocks: a child that a
    // sibling test spawns in this process shares a lock's open file description
}
