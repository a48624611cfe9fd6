//! How a Python command line says what it runs, read as CPython reads it.

/// How a Python command line says what to run (CPython's own option rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PyLaunch {
    /// `-m <module>`
    Module(String),
    /// A script path, as Python will open it.
    Script(String),
    /// `-c <code>`, `-` (stdin) or an interactive session.
    Other,
}

/// Parse what a Python interpreter runs from its arguments (after argv[0]):
/// grouped flags (`-BEs`), options with an argument (`-W`, `-X`, attached
/// or separate, `--check-hash-based-pycs`), `-m`/`-c` ending the options,
/// `--`, and the first operand as the script.
pub fn python_launch(args: &[String]) -> PyLaunch {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            return args
                .get(i + 1)
                .map_or(PyLaunch::Other, |s| PyLaunch::Script(s.clone()));
        }
        if a == "-" || !a.starts_with('-') {
            return match a {
                "-" => PyLaunch::Other,
                _ => PyLaunch::Script(a.to_string()),
            };
        }
        if let Some(long) = a.strip_prefix("--") {
            // Only one long option takes a separate value.
            i += if long == "check-hash-based-pycs" {
                2
            } else {
                1
            };
            continue;
        }
        let flags = &a[1..];
        for (k, c) in flags.char_indices() {
            let rest = &flags[k + c.len_utf8()..];
            match c {
                'm' | 'c' | 'W' | 'X' => {
                    let value = if rest.is_empty() {
                        i += 1;
                        args.get(i).cloned()
                    } else {
                        Some(rest.to_string())
                    };
                    match c {
                        'm' => return value.map_or(PyLaunch::Other, PyLaunch::Module),
                        'c' => return PyLaunch::Other,
                        _ => break,
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    PyLaunch::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_command_lines_are_read_as_python_reads_them() {
        let v = |a: &[&str]| python_launch(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let m = |s: &str| PyLaunch::Module(s.into());
        let sc = |s: &str| PyLaunch::Script(s.into());
        assert_eq!(v(&["-m", "memtomem.server"]), m("memtomem.server"));
        assert_eq!(v(&["-BEs", "-mmemtomem.server"]), m("memtomem.server"));
        assert_eq!(
            v(&["-W", "ignore", "-X", "dev", "/e/bin/mm", "serve"]),
            sc("/e/bin/mm")
        );
        assert_eq!(v(&["-Wignore", "--", "-x.py"]), sc("-x.py"));
        assert_eq!(v(&["--check-hash-based-pycs", "never", "s.py"]), sc("s.py"));
        // The script is the first operand: later arguments are its own.
        assert_eq!(v(&["/tmp/a.py", "-m", "memtomem"]), sc("/tmp/a.py"));
        assert_eq!(v(&["-c", "import memtomem", "/e/bin/mm"]), PyLaunch::Other);
        assert_eq!(v(&["-Ic", "x"]), PyLaunch::Other);
        assert_eq!(v(&["-"]), PyLaunch::Other);
        assert_eq!(v(&[]), PyLaunch::Other);
        assert_eq!(v(&["-m"]), PyLaunch::Other);
    }
}
