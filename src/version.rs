//! `--version` must be one literal PEP 440 release (contract §4.1), never a
//! specifier: `0.6.12`, `0.7.0rc1`, `1.0.post1`, `0.1.30.dev0`, `1.0+local`.

/// Check `s` against upstream's grammar; returns a message naming the value.
pub fn validate(s: &str) -> Result<String, String> {
    if is_bare_release(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a bare PEP 440 release (e.g. 0.1.30, 0.1.30rc1). Pass a literal version, not a specifier like '>=0.1.30'."
        ))
    }
}

/// Order two releases by their numeric release segments (`0.6.9` < `0.6.12`;
/// `1.0` == `1.0.0`); pre/post/dev tags break no tie. `None` if either has no
/// numeric release.
pub fn compare(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let nums = |s: &str| -> Option<Vec<u64>> {
        let release: String = s
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let v: Vec<u64> = release
            .split('.')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        (!v.is_empty()).then_some(v)
    };
    let (mut x, mut y) = (nums(a)?, nums(b)?);
    let n = x.len().max(y.len());
    x.resize(n, 0);
    y.resize(n, 0);
    Some(x.cmp(&y))
}

fn is_bare_release(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let (public, local) = match lower.split_once('+') {
        Some((p, l)) => (p, Some(l)),
        None => (lower.as_str(), None),
    };
    if let Some(local) = local {
        let ok = !local.is_empty()
            && local
                .split(['.', '_', '-'])
                .all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !ok {
            return false;
        }
    }
    let b = public.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    // release: N(.N)*
    if !digits(&mut i) {
        return false;
    }
    while i < b.len() && b[i] == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
        i += 1;
        digits(&mut i);
    }
    // pre-release: (a|b|rc)N
    for tag in ["rc", "a", "b"] {
        if public[i..].starts_with(tag) {
            i += tag.len();
            if !digits(&mut i) {
                return false;
            }
            break;
        }
    }
    for tag in [".post", ".dev"] {
        if public[i..].starts_with(tag) {
            i += tag.len();
            if !digits(&mut i) {
                return false;
            }
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_order_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(compare("0.6.9", "0.6.12"), Some(Less));
        assert_eq!(compare("1.0", "1.0.0"), Some(Equal));
        assert_eq!(compare("0.7.0rc1", "0.6.12"), Some(Greater));
        assert_eq!(compare("x", "1"), None);
    }
    use proptest::prelude::*;

    #[test]
    fn accepted() {
        for v in [
            "0.1.30",
            "0.1.30rc1",
            "0.1.30.post1",
            "0.1.30.dev0",
            "1",
            "0.1.30+local",
            "0.6.12",
            "0.7.0rc1",
            "1.0.post1",
            "1.0+local",
            "1.0a1.post2.dev3+ubuntu.1-x",
        ] {
            assert!(validate(v).is_ok(), "{v}");
        }
    }

    #[test]
    fn rejected() {
        for v in [
            ">=0.1.30",
            "v0.1",
            "0.1.30-rc1",
            "0.1 .30",
            "",
            "==0.6.12",
            "0.6.*",
            "0.6.12 ",
            "1.",
            "1.0+",
            "1.0rc",
            "latest",
        ] {
            assert!(validate(v).is_err(), "{v}");
        }
        assert!(validate(">=0.6").unwrap_err().contains("'>=0.6'"));
    }

    proptest! {
        #[test]
        fn generated_releases_are_accepted(parts in proptest::collection::vec(0u32..1000, 1..5), pre in proptest::option::of(0u32..10)) {
            let mut v = parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(".");
            if let Some(p) = pre { v.push_str(&format!("rc{p}")); }
            prop_assert!(validate(&v).is_ok());
        }

        #[test]
        fn operators_are_always_rejected(op in "(>=|<=|==|~=|!=|<|>)", v in "[0-9]{1,3}(\\.[0-9]{1,3}){0,2}") {
            let spec = format!("{op}{v}");
            prop_assert!(validate(&spec).is_err());
        }
    }
}
