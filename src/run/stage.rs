//! Stage and prove the new release while the old servers still serve; the
//! engine is [`crate::txn`], this is its step in the run and its report.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::report::Ctx;
use crate::error::UpgradeError;
use crate::install::{self, UvError};
use crate::{exit, receipt, txn};

/// Stage the new release beside the installed one and prove it: metadata,
/// entry points and an MCP handshake from the staged copy, which also
/// compiles the bytecode a server start needs. Any failure discards the
/// staging dir; nothing was stopped or changed.
pub(super) fn stage_and_prove(
    cx: &mut Ctx,
    uv: &install::Uv,
    layout: &txn::Layout,
    argv: &[String],
    spec: &str,
) -> Result<txn::Staged, u8> {
    cx.ui.say(format!(
        "Staging {spec} beside the current installation (the running servers keep serving)…"
    ));
    cx.ui.begin(&format!("Staging {spec} with uv"));
    let mut staged = match txn::stage(layout, uv, argv) {
        Ok(st) => st,
        Err(e) => {
            // The step is marked failed before uv's words, not after them.
            cx.ui.abandon();
            // Best effort: whatever uv left in the staging dir goes.
            if let Ok(Some(j)) = txn::journal::load(&layout.work()) {
                txn::discard(&layout.work(), &j);
            }
            if let txn::StageError::Uv(u) = &e {
                if let Some(err) = u.stderr() {
                    cx.doc.insert("stderr".into(), json!(err));
                    cx.ui.warn(format!("uv said:\n{}", err.trim_end()));
                }
            }
            let msg = format!("cannot install {spec}: {e}. Nothing was stopped; the installed memtomem is untouched.");
            let err = match e {
                txn::StageError::Uv(UvError::Interrupted { .. }) => UpgradeError::Interrupted(msg),
                _ => UpgradeError::Install(msg),
            };
            return Err(cx.fail(err, None));
        }
    };
    let version = staged.journal.version.clone();
    cx.ui.event(
        "staged",
        json!({"spec": spec, "version": version, "ms": staged.elapsed.as_millis() as u64}),
    );
    cx.doc.insert(
        "staged".into(),
        json!({"version": version, "ms": staged.elapsed.as_millis() as u64}),
    );
    // The proof below checks the staged copy against itself; what it must be
    // is what --version asked for.
    if let Some(want) = cx.s.version.as_deref().filter(|w| !is_release(&version, w)) {
        txn::discard(&layout.work(), &staged.journal);
        let msg = format!("uv installed memtomem {version} instead of the requested {want}. Nothing was stopped; the installed memtomem is untouched.");
        return Err(cx.fail(UpgradeError::Install(msg), None));
    }
    let timeout = cx.s.uv_timeout;
    let env = staged.journal.stage_env.clone();
    let real = staged.journal.env.clone();
    let handshake = !cx.s.no_verify;
    // Without the handshake (which compiles what a start imports), compile
    // everything for the real path, overlapping the metadata check.
    let compile = (!handshake && !staged.compiled_by_uv).then(|| {
        let (env, real) = (env.clone(), real.clone());
        std::thread::spawn(move || txn::prove::compile_bytecode(&env, &real, timeout))
    });
    let proof = prove_staged(&env, &version, handshake, timeout);
    let compiled = compile.map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())));
    let fail = |cx: &mut Ctx, staged: &txn::Staged, msg: String| {
        txn::discard(&layout.work(), &staged.journal);
        let err = if crate::interrupt::requested().is_some() {
            UpgradeError::Interrupted(msg)
        } else {
            UpgradeError::Install(msg)
        };
        cx.fail(err, None)
    };
    let proof = match proof {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("the staged memtomem {version} failed its proof: {e}. Nothing was stopped; the installed memtomem is untouched.");
            return Err(fail(cx, &staged, msg));
        }
    };
    if let Some(Err(e)) = compiled {
        cx.warnings.push(format!(
            "bytecode was not compiled ({e}); the first start compiles it"
        ));
    }
    cx.ui.event("proven", proof.clone());
    cx.doc.insert("proof".into(), proof);
    match txn::relocate::relocate(
        &env,
        &real,
        &staged.bin,
        layout.bin_dir.as_deref().unwrap_or(Path::new("/")),
    ) {
        Ok(files) => {
            cx.ui.event("relocated", json!({"files": files.len()}));
        }
        Err(e) => {
            let msg = format!("cannot relocate the staged environment: {e}. Nothing was stopped.");
            return Err(fail(cx, &staged, msg));
        }
    }
    crate::sys::fault_point("relocated");
    staged.receipt = match receipt::read(&env) {
        Ok(r) => r,
        Err(e) => return Err(fail(cx, &staged, e)),
    };
    Ok(staged)
}

/// `got` is the release `want` names (PEP 440 equality: `1.0` is `1.0.0`).
fn is_release(got: &str, want: &str) -> bool {
    let plain = |s: &str| s.chars().all(|c| c.is_ascii_digit() || c == '.');
    got.eq_ignore_ascii_case(want)
        || (plain(got)
            && plain(want)
            && crate::version::compare(got, want) == Some(std::cmp::Ordering::Equal))
}

/// The proof of a staged environment, as a JSON record for the report.
pub(super) fn prove_staged(
    env: &Path,
    version: &str,
    handshake: bool,
    timeout: Duration,
) -> Result<Value, String> {
    // The handshake (a full server start) dominates: the metadata probe runs
    // beside it, and its verdict still comes first.
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hs = handshake.then(|| {
        let (env, cancel) = (env.to_path_buf(), cancel.clone());
        std::thread::spawn(move || {
            txn::prove::mcp_initialize(&env, timeout.min(Duration::from_secs(120)), &cancel)
        })
    });
    let meta = txn::prove::metadata(env, false, timeout);
    // A failed probe decides: the handshake stops waiting (its group is killed).
    let probe_failed = meta.as_ref().map_or(true, |m| {
        m.error.is_some() || m.version.as_deref() != Some(version) || !m.missing.is_empty()
    });
    if probe_failed {
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let hs = hs.map(|h| {
        h.join()
            .unwrap_or_else(|_| Err("the handshake panicked".into()))
    });
    let meta = meta?;
    if let Some(e) = &meta.error {
        return Err(format!("its metadata cannot be read: {e}"));
    }
    if meta.version.as_deref() != Some(version) {
        return Err(format!(
            "its interpreter reports memtomem {} instead of {version}",
            meta.version.as_deref().unwrap_or("(none)")
        ));
    }
    if !meta.missing.is_empty() {
        return Err(format!(
            "entry points do not resolve: {}",
            meta.missing.join(", ")
        ));
    }
    let Some(hs) = hs else {
        return Ok(json!({"version": version, "initialize": null}));
    };
    let hs = hs?;
    if hs.version != version {
        return Err(format!(
            "its server answers initialize with version {} instead of {version}",
            hs.version
        ));
    }
    Ok(
        json!({"version": version, "initialize": {"name": hs.name, "version": hs.version, "ms": hs.ms}}),
    )
}

/// A downgrade the store cannot survive is refused: memtomem refuses to open
/// a store stamped with a newer schema than it knows.
pub(super) fn schema_allows(
    cx: &Ctx,
    layout: &txn::Layout,
    staged: &txn::Staged,
    installed: &str,
    target: &str,
) -> Result<(), String> {
    if crate::version::compare(target, installed) != Some(std::cmp::Ordering::Less) {
        return Ok(());
    }
    let Some(db) = cx.s.paths.store_path() else {
        return Ok(());
    };
    let timeout = Duration::from_secs(30);
    let Some(store) = txn::prove::store_schema(&layout.env().join("bin/python"), &db, timeout)
    else {
        return Ok(());
    };
    let meta = txn::prove::metadata(&staged.journal.stage_env, true, timeout)?;
    match meta.schema {
        Some(supported) if store > supported => Err(format!(
            "refusing to downgrade memtomem {installed} to {target}: the store {} has schema version {store}, and {target} supports only up to {supported}; nothing was changed",
            db.display()
        )),
        _ => Ok(()),
    }
}

/// The target is what is installed: a no-op that stops nothing.
pub(super) fn up_to_date(cx: &mut Ctx, version: &str) -> u8 {
    cx.doc.insert("ok".into(), json!(true));
    cx.doc.insert("up_to_date".into(), json!(true));
    cx.doc.insert("version".into(), json!(version));
    cx.doc.insert("killed".into(), json!([]));
    cx.ui.say(format!(
        "memtomem {version} is already installed; nothing was stopped or changed (--reinstall reinstalls it anyway)."
    ));
    cx.finish(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::is_release;

    #[test]
    fn the_staged_version_must_be_the_requested_release() {
        assert!(is_release("0.6.12", "0.6.12"));
        assert!(is_release("1.0.0", "1.0"));
        assert!(is_release("0.7.0RC1", "0.7.0rc1"));
        assert!(!is_release("0.6.13", "0.6.12"));
        assert!(!is_release("0.7.0rc1", "0.7.0"));
        assert!(!is_release("0.7.0", "0.7.0.post1"));
    }
}
