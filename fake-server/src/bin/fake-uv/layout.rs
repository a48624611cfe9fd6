//! The tool environment, laid out as uv does (see the binary's docs for the tree).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::request::Requirement;
use crate::{ENTRY_POINTS, PACKAGE, PYTHON_LIB};

pub struct Layout<'a> {
    pub tool_dir: &'a Path,
    pub bin_dir: &'a Path,
    /// The version installed (the dist-info, what `bin/python` and the server report).
    pub version: &'a str,
    /// memtomem first, then each `--with`, as the receipt lists them.
    pub requirements: Vec<Requirement>,
    pub python: Option<&'a str>,
    pub compile_bytecode: bool,
    pub broken_entry: bool,
    pub broken_python: bool,
    /// The receipt names `mm` as an entry point, but it is neither written nor linked.
    pub dangling_entry: bool,
}

/// `'…'` for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A TOML string (escaping by the toml crate).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn write_exec(path: &Path, body: &str) -> std::io::Result<()> {
    fs::write(path, body)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// Replaces whatever is at `link` (never following it) with a symlink to `target`.
fn relink(target: &Path, link: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link)?;
    }
    symlink(target, link)
}

impl Layout<'_> {
    fn env(&self) -> PathBuf {
        self.tool_dir.join(PACKAGE)
    }

    /// uv's receipt, in uv's own layout (inline tables, `requirements` on one line when
    /// there is one); every value is encoded by the toml crate.
    fn receipt(&self) -> String {
        let req = |r: &Requirement| {
            let mut fields = vec![format!("name = {}", toml_str(&r.name))];
            if !r.extras.is_empty() {
                let extras: Vec<toml::Value> = r
                    .extras
                    .iter()
                    .map(|e| toml::Value::String(e.clone()))
                    .collect();
                fields.push(format!("extras = {}", toml::Value::Array(extras)));
            }
            if let Some(s) = &r.specifier {
                fields.push(format!("specifier = {}", toml_str(s)));
            }
            format!("{{ {} }}", fields.join(", "))
        };
        let mut out = String::from("[tool]\n");
        if let [only] = &self.requirements[..] {
            out.push_str(&format!("requirements = [{}]\n", req(only)));
        } else {
            out.push_str("requirements = [\n");
            for r in &self.requirements {
                out.push_str(&format!("    {},\n", req(r)));
            }
            out.push_str("]\n");
        }
        if let Some(p) = self.python {
            out.push_str(&format!("python = {}\n", toml_str(p)));
        }
        out.push_str("entrypoints = [\n");
        for name in ENTRY_POINTS {
            let path = self.bin_dir.join(name);
            out.push_str(&format!(
                "    {{ name = {}, install-path = {}, from = {} }},\n",
                toml_str(name),
                toml_str(&path.to_string_lossy()),
                toml_str(PACKAGE)
            ));
        }
        out.push_str("]\n");
        if self.compile_bytecode {
            out.push_str("\n[tool.options]\ncompile-bytecode = true\n");
        }
        out
    }

    /// The stand-in interpreter: the metadata probe's answer, whatever it is asked.
    fn python_script(&self) -> String {
        if self.broken_python {
            return "#!/bin/sh\necho 'fake python: broken' >&2\nexit 1\n".into();
        }
        let line = format!(
            r#"{{"version": {}, "missing": [], "schema": null}}"#,
            json!(self.version)
        );
        format!(
            "#!/bin/sh\n# fake-uv's stand-in interpreter for memtomem {v}: arguments are ignored.\nprintf '%s\\n' {}\n",
            sh_quote(&line),
            v = self.version
        )
    }

    fn entry_script(&self, name: &str, python: &Path) -> String {
        let head = format!("#!/bin/sh\n# python: {}\n", python.display());
        if self.broken_entry {
            return format!(
                "{head}echo \"ModuleNotFoundError: No module named '{PACKAGE}'\" >&2\nexit 1\n"
            );
        }
        match std::env::var("FAKE_UV_SERVER_BIN") {
            Ok(server) if name == "memtomem-server" => format!(
                "{head}exec {} --server-version {}{} \"$@\"\n",
                sh_quote(&server),
                sh_quote(self.version),
                server_args()
                    .iter()
                    .map(|a| format!(" {}", sh_quote(a)))
                    .collect::<String>()
            ),
            _ => format!("{head}exit 0\n"),
        }
    }

    pub fn write(&self) -> std::io::Result<()> {
        let env = self.env();
        if fs::symlink_metadata(&env).is_ok() {
            fs::remove_dir_all(&env)?;
        }
        let site = env.join(PYTHON_LIB);
        let dist = site.join(format!("{PACKAGE}-{}.dist-info", self.version));
        fs::create_dir_all(&dist)?;
        fs::write(
            dist.join("METADATA"),
            format!(
                "Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {}\n",
                self.version
            ),
        )?;
        fs::write(dist.join("INSTALLER"), "uv\n")?;
        fs::create_dir_all(site.join(PACKAGE))?;
        fs::write(
            site.join(PACKAGE).join("__init__.py"),
            format!("__version__ = {}\n", json!(self.version)),
        )?;
        symlink("lib", env.join("lib64"))?;
        let home = self
            .python
            .and_then(|p| Path::new(p).parent())
            .map(|d| d.display().to_string())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/usr/bin".into());
        fs::write(
            env.join("pyvenv.cfg"),
            format!(
                "home = {home}\nimplementation = CPython\nuv = 0.13.9\nversion_info = 3.12.1\ninclude-system-site-packages = false\n"
            ),
        )?;
        fs::write(env.join(".gitignore"), "*")?;
        fs::write(
            env.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )?;

        let bin = env.join("bin");
        fs::create_dir_all(&bin)?;
        let python = bin.join("python");
        write_exec(&python, &self.python_script())?;
        for alias in ["python3", "python3.12"] {
            symlink("python", bin.join(alias))?;
        }
        fs::create_dir_all(self.bin_dir)?;
        for name in ENTRY_POINTS {
            if self.dangling_entry && name == "mm" {
                continue;
            }
            write_exec(&bin.join(name), &self.entry_script(name, &python))?;
            relink(&bin.join(name), &self.bin_dir.join(name))?;
        }
        // uv writes the receipt last: an environment with a receipt is complete.
        fs::write(env.join("uv-receipt.toml"), self.receipt())
    }

    pub fn summary(&self) -> Value {
        json!({
            "version": self.version,
            "env": self.env(),
            "bin_dir": self.bin_dir,
            "broken_entry": self.broken_entry,
            "broken_python": self.broken_python,
            "dangling_entry": self.dangling_entry,
        })
    }
}

/// `FAKE_UV_SERVER_ARGS`, split on whitespace.
pub fn server_args() -> Vec<String> {
    std::env::var("FAKE_UV_SERVER_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}
