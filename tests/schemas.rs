//! The machine interface: real outputs of mm-upgrade (fake servers, the
//! stand-in uv) validated against the JSON Schemas in `schemas/`.
//!
//! Each schema is checked twice: as published (open: a consumer must accept
//! keys added later) and closed (every `"additionalProperties": true`
//! becomes `"unevaluatedProperties": false`), so a key that mm-upgrade
//! prints but the schema does not document fails here. Adding a key: add it
//! to the schema's `properties` (and to `required` where it always appears),
//! then, if a new mode produces it, a run below that shows it.

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::{json_run, Sandbox};
use serde_json::{json, Value};

struct Schema {
    name: &'static str,
    open: jsonschema::Validator,
    closed: jsonschema::Validator,
}

fn schema_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{name}.schema.json"))
}

fn raw(name: &str) -> Value {
    let p = schema_path(name);
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The schema with every open object closed to the keys it documents.
fn closed(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                if k == "additionalProperties" && *v == Value::Bool(true) {
                    out.insert("unevaluatedProperties".into(), Value::Bool(false));
                } else {
                    out.insert(k.clone(), closed(v));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(closed).collect()),
        other => other.clone(),
    }
}

impl Schema {
    fn load(name: &'static str) -> Schema {
        let s = raw(name);
        let build = |s: &Value| {
            jsonschema::draft202012::new(s).unwrap_or_else(|e| panic!("schema {name}: {e}"))
        };
        Schema {
            name,
            open: build(&s),
            closed: build(&closed(&s)),
        }
    }

    fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
        v.iter_errors(doc)
            .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
            .collect()
    }

    /// `doc` (from `what`) is valid, open and closed.
    fn check(&self, what: &str, doc: &Value) {
        for (how, v) in [("published", &self.open), ("closed", &self.closed)] {
            let errs = Self::errors(v, doc);
            assert!(
                errs.is_empty(),
                "{what} does not match the {how} {} schema:\n  {}\ndocument: {doc}",
                self.name,
                errs.join("\n  ")
            );
        }
    }

    /// `doc` is invalid against the published schema.
    fn rejects(&self, what: &str, doc: &Value) {
        assert!(
            !self.open.is_valid(doc),
            "the {} schema accepts {what}: {doc}",
            self.name
        );
    }
}

/// The events FILE: one JSON object per line.
fn event_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line {l:?}: {e}")))
        .collect()
}

/// Upgrade runs: each report is checked against the report schema, each
/// `--events` line against the event schema, and the kinds seen are kept.
struct Runs {
    report: Schema,
    events: Schema,
    kinds: BTreeSet<String>,
}

impl Runs {
    fn run(&mut self, sb: &Sandbox, what: &str, args: &[&str], code: i32) -> Value {
        self.run_env(sb, what, args, &[], code)
    }

    fn run_env(
        &mut self,
        sb: &Sandbox,
        what: &str,
        args: &[&str],
        env: &[(&str, &str)],
        code: i32,
    ) -> Value {
        let ev = sb.path(&format!("events-{}.jsonl", what.replace(' ', "-")));
        let mut cmd = sb.upgrader();
        cmd.args(args).arg("--events").arg(&ev);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let doc = json_run(&mut cmd, code);
        self.report.check(what, &doc);
        for l in event_lines(&ev) {
            self.events
                .check(&format!("{what}: event {}", l["event"]), &l);
            self.kinds.insert(l["event"].as_str().unwrap().to_string());
        }
        doc
    }
}

#[test]
fn upgrade_reports_and_events_of_every_mode_match_their_schemas() {
    let mut runs = Runs {
        report: Schema::load("upgrade-report"),
        events: Schema::load("event"),
        kinds: BTreeSet::new(),
    };
    // Success: a server that ignores SIGTERM (escalated), a web UI that
    // leaves its pid file behind (unlinked), a plain server.
    let sb = Sandbox::new();
    let _a = sb.server("a", &["--mode", "ignore-sigterm"]);
    let _w = sb.server("w", &["--web", "--mode", "leak-pidfile"]);
    let _b = sb.server(
        "b",
        &["--store", &sb.path("home/b.db").display().to_string()],
    );
    let args = ["-y", "--json", "--grace", "0.2"];
    let doc = runs.run(&sb, "a successful upgrade", &args, 0);
    assert_eq!(doc["killed"].as_array().unwrap().len(), 3, "{doc}");

    // Up to date: a no-op (the sandbox now has 0.6.12).
    let args = ["-y", "--json", "--version", "0.6.12"];
    let doc = runs.run(&sb, "an up-to-date run", &args, 0);
    assert_eq!(doc["up_to_date"], true, "{doc}");

    // Dry run, clean, with a live server.
    let sb = Sandbox::new();
    let _s = sb.server("s", &[]);
    let doc = runs.run(&sb, "a dry run", &["--dry-run", "--json"], 0);
    assert_eq!(doc["dry_run"], true);

    // Refused: no -y and no terminal. Failed before anything stopped: no uv
    // (a real run, then a dry run).
    runs.run(&sb, "a refusal without -y", &["--json"], 3);
    let no_uv = ["--json", "--uv", "/nonexistent/uv"];
    runs.run(&sb, "a run without uv", &[&no_uv[..], &["-y"]].concat(), 5);
    let args = [&no_uv[..], &["--dry-run"]].concat();
    runs.run(&sb, "a dry run without uv", &args, 5);

    // Refused dry run: a lock over a payload naming nobody.
    let sb = Sandbox::new();
    let _bad = sb.server("bad", &["--mode", "corrupt-pidfile=garbage"]);
    let doc = runs.run(&sb, "a refused dry run", &["--dry-run", "--json"], 3);
    assert_eq!(doc["inventory_complete"], false, "{doc}");

    // The switch fails its check in place and is exchanged back (uv names an
    // entry point it never wrote); servers were stopped first.
    let sb = Sandbox::new();
    let _s = sb.server("s", &[]);
    let env = [("FAKE_UV_BEHAVIOR", "dangling-entry")];
    let doc = runs.run_env(&sb, "a rolled-back switch", &["-y", "--json"], &env, 5);
    assert_eq!(doc["rolled_back"], true, "{doc}");

    // A run killed while uv stages: the next one recovers first.
    kill_mid_staging(&sb);
    let doc = runs.run(&sb, "a run after a crash", &["-y", "--json"], 0);
    assert_eq!(doc["recovered"], "discarded", "{doc}");

    // The runs above showed every kind the source emits.
    let want = emitted_event_kinds();
    assert_eq!(runs.kinds, want, "event kinds seen vs emitted by src/");
}

/// Start an upgrade, SIGKILL it while uv hangs half-way through staging
/// (uv dies with it), and leave its staging and journal behind.
fn kill_mid_staging(sb: &Sandbox) {
    use std::os::unix::process::CommandExt;
    let mut child = sb
        .upgrader_std()
        .env("FAKE_UV_BEHAVIOR", "hang-half-written")
        .args(["-y", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Its group is killed on drop, on every path.
    let group = testkit::Group(child.id() as i32);
    common::wait_for("the staging call", || sb.uv_hanging_pid().is_some());
    let uv = sb.uv_hanging_pid().unwrap();
    group.signal(libc::SIGKILL);
    let _ = child.wait();
    common::wait_for("uv to die with mm-upgrade", || !common::alive(uv));
}

#[test]
fn status_and_recover_documents_match_their_schemas() {
    let status = Schema::load("status");
    let recover = Schema::load("recover");
    let sb = Sandbox::new();
    let run = |schema: &Schema, what: &str, args: &[&str], code| {
        let doc = json_run(sb.upgrader().args(args), code);
        schema.check(what, &doc);
        doc
    };
    let st = ["status", "--json"];
    let no_uv = ["--uv", "/nonexistent/uv"];
    run(&status, "status with nothing running", &st, 0);
    // Servers started after the install: current.
    sb.set_install_time(std::time::Duration::from_secs(3600));
    let _s = sb.server("s", &[]);
    let _w = sb.server("w", &["--web"]);
    let doc = run(&status, "status with current servers", &st, 0);
    assert_eq!(doc["processes"].as_array().unwrap().len(), 2, "{doc}");
    // Installed after the servers started: stale, exit 6.
    sb.set_install_time(std::time::Duration::ZERO);
    run(&status, "status with stale servers", &st, 6);
    // Without uv: a warning, no version and no install time (so nothing is
    // proven stale).
    run(&status, "status without uv", &[&st[..], &no_uv].concat(), 0);

    let rec = ["recover", "--json"];
    run(&recover, "recover with nothing to do", &rec, 0);
    run(
        &recover,
        "recover without uv",
        &[&rec[..], &no_uv].concat(),
        5,
    );
}

/// The schemas say something: documents that break the contract fail.
#[test]
fn the_schemas_reject_what_breaks_the_contract() {
    let report = Schema::load("upgrade-report");
    let ok = json!({"ok": true, "dry_run": true, "inventory_complete": true, "would_kill": [],
        "would_remove": [], "would_install": ["tool", "install", "memtomem"], "extras": [],
        "version": null, "processes": [], "exit_code": 0});
    report.check("a minimal dry run", &ok);
    let with = |k: &str, v: Value| {
        let mut d = ok.clone();
        d[k] = v;
        d
    };
    let without = |k: &str| {
        let mut d = ok.clone();
        d.as_object_mut().unwrap().remove(k);
        d
    };
    report.rejects("a report without ok", &without("ok"));
    report.rejects("a dry run without would_kill", &without("would_kill"));
    report.rejects("an undocumented exit code", &with("exit_code", json!(7)));
    report.rejects("ok with a failing exit code", &with("exit_code", json!(3)));
    let mut failed = with("ok", json!(false));
    failed["exit_code"] = json!(5);
    report.rejects("a failure without error", &failed);
    failed["error"] = json!("uv exploded");
    report.check("a failure with error", &failed);
    report.rejects("a failure exiting 0", &with("ok", json!(false)));
    report.rejects(
        "a completed upgrade without killed",
        &json!({"ok": true, "exit_code": 0}),
    );
    // Keys are only added: the published schema accepts a key it does not
    // know, the closed one (this suite's check) does not.
    let newer = with("added_later", json!(1));
    assert!(report.open.is_valid(&newer));
    assert!(!report.closed.is_valid(&newer));

    let status = Schema::load("status");
    let st = json!({"processes": [], "stale": 0, "installed_version": "0.6.12",
        "installed_at": null, "db_writer": null, "problems": [], "warnings": [], "exit_code": 0});
    status.check("a minimal status", &st);
    let mut stale = st.clone();
    stale["stale"] = json!(1);
    status.rejects("stale processes exiting 0", &stale);

    let events = Schema::load("event");
    let e = json!({"event": "exited", "t_ms": 1.5, "mono_ns": 1, "pid": 42,
        "confirmed_by": "pidfd", "after_ms": 3.0, "error": null});
    events.check("an exited event", &e);
    let mut bad = e.clone();
    bad["confirmed_by"] = json!("guessed");
    events.rejects("an unknown confirmation", &bad);
    events.rejects(
        "an unknown event kind",
        &json!({"event": "teleported", "t_ms": 1.0, "mono_ns": 1}),
    );
}

/// The event kinds the source emits (`.event("kind", …)`) are the kinds the
/// event schema lists: a new kind cannot ship undocumented.
#[test]
fn the_event_schema_lists_every_kind_the_source_emits() {
    let schema = raw("event");
    let listed: BTreeSet<String> = schema["properties"]["event"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, emitted_event_kinds());
}

fn emitted_event_kinds() -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&p).unwrap();
                for (i, _) in text.match_indices(".event(") {
                    let rest = text[i + ".event(".len()..].trim_start();
                    if let Some(quoted) = rest.strip_prefix('"') {
                        let kind = &quoted[..quoted.find('"').unwrap()];
                        kinds.insert(kind.to_string());
                    }
                }
            }
        }
    }
    assert!(kinds.len() >= 10, "the source scan found {kinds:?}");
    kinds
}

/// `reap --json` (tests/cli_reap.rs has its behaviour): an orphan planned,
/// refused without -y, stopped; nothing to reap.
#[test]
fn reap_documents_match_their_schema() {
    let reap = Schema::load("reap");
    let sb = Sandbox::new();
    let run = |what: &str, args: &[&str], code| {
        let doc = json_run(sb.upgrader().args(args), code);
        reap.check(what, &doc);
        doc
    };
    run("reap with no orphan", &["reap", "-y", "--json"], 0);
    let o = hosts::Orphan::start(&sb, "orphan");
    let doc = run("reap dry run", &["reap", "--dry-run", "--json"], 0);
    assert_eq!(doc["would_kill"], json!([o.pid()]), "{doc}");
    run("reap refused", &["reap", "--json"], 3);
    let doc = run("reap", &["reap", "-y", "--json"], 0);
    assert_eq!(doc["killed"], json!([o.pid()]), "{doc}");
}
