//! Presence and instance marker names (secondary servers).

/// A presence or instance marker name: `<pid>-<ppid>-<digest16>-<procid8>-<nonce8>.lock`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MarkerName {
    pub pid: i64,
    pub ppid: i64,
    pub digest: String,
    pub procid: String,
}

pub fn parse_marker_name(name: &str) -> Option<MarkerName> {
    let stem = name.strip_suffix(".lock")?;
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() != 5 {
        return None;
    }
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let dec = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(dec(parts[0])
        && dec(parts[1])
        && hex(parts[2], 16)
        && hex(parts[3], 8)
        && hex(parts[4], 8))
    {
        return None;
    }
    Some(MarkerName {
        pid: parts[0].parse().ok()?,
        ppid: parts[1].parse().ok()?,
        digest: parts[2].to_string(),
        procid: parts[3].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names() {
        let m = parse_marker_name("2792-1-7e8680b97476a9e5-54004f8e-6080cb89.lock").unwrap();
        assert_eq!((m.pid, m.ppid, m.procid.as_str()), (2792, 1, "54004f8e"));
        assert!(parse_marker_name("2792-1-7e8680b97476a9e5-54004f8e.lock").is_none());
        assert!(parse_marker_name("x-1-7e8680b97476a9e5-54004f8e-6080cb89.lock").is_none());
        assert!(parse_marker_name("2792-1-7E8680B97476A9E5-54004f8e-6080cb89.lock").is_none());
    }
}
