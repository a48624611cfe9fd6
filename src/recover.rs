//! `mm-upgrade recover`: finish or undo a transaction an earlier run left
//! behind (killed, power cut), under uv's tool lock. A normal upgrade does
//! the same first; this does only that.

use serde_json::json;

use crate::cli::Common;
use crate::discover::Installation;
use crate::{exit, install, txn};

pub fn run(common: &Common) -> u8 {
    let report = |ok: bool, recovered: Option<&str>, msg: &str, code: u8| {
        if common.json {
            let doc = json!({"ok": ok, "recovered": recovered, "message": msg, "exit_code": code});
            crate::ui::outln!("{}", crate::ui::python_json(&doc));
        } else if ok {
            crate::ui::outln!("{msg}");
        } else {
            crate::ui::error_line(msg);
        }
        code
    };
    let uv = match install::Uv::locate(
        common.uv.as_deref(),
        std::env::var_os("PATH").as_deref(),
        std::time::Duration::from_secs(10),
    ) {
        Ok(uv) => uv,
        Err(e) => return report(false, None, &e.to_string(), exit::INSTALL_FAILED),
    };
    let install = match Installation::from_uv(&uv) {
        Ok(i) => i,
        Err(e) => {
            let msg = format!("cannot ask uv for its tool directory ({e})");
            return report(false, None, &msg, exit::INSTALL_FAILED);
        }
    };
    let Some(tool_dir) = install.tool_dir().filter(|t| t.is_absolute()) else {
        let msg = "uv did not name an absolute tool directory";
        return report(false, None, msg, exit::INSTALL_FAILED);
    };
    let layout = txn::Layout {
        tool_dir: tool_dir.to_path_buf(),
        bin_dir: install.bin_dir.clone(),
    };
    let _lock = match txn::lock_tool_dir(&layout.tool_dir) {
        Ok(l) => l,
        Err(e) => return report(false, None, &e, exit::REFUSED),
    };
    match txn::recover(&layout) {
        Ok(Some(r)) => report(true, Some(r.key()), &r.describe(), exit::OK),
        Ok(None) => report(true, None, "no interrupted upgrade to recover", exit::OK),
        Err(e) => report(false, None, &e, exit::PARTIAL),
    }
}
