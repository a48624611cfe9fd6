//! The merged timeline against `order` (in this order), `never` (not at all) and, for
//! another upgrader, `[[differential.within]]` (time bounds standing in for evidence
//! only mm-upgrade's JSON has).

use super::super::matching::{ev_matches, pattern_for};
use super::super::Runner;
use crate::model::{Expect, Pattern};
use crate::sys;

impl Runner {
    pub(super) fn check_events(&mut self, e: &Expect, diff: bool) -> Result<(), String> {
        let tl = self.merged_timeline();
        let mut pos = 0usize;
        let mut prev: Option<Pattern> = None;
        for pat in &e.order {
            let Some(pat) = pattern_for(pat, diff) else {
                continue;
            };
            let detail = pat.detail.as_deref().map(|d| self.expand(d)).transpose()?;
            let hit = |ev: &_| ev_matches(ev, &pat, detail.as_deref());
            match tl[pos..].iter().position(hit) {
                Some(i) => {
                    pos += i + 1;
                    prev = Some(pat.clone());
                }
                None => {
                    let shown = show(&pat, detail.as_deref());
                    self.fail(match (&prev, tl.iter().any(hit)) {
                        (Some(p), true) => format!(
                            "order: {shown:?} happened, but not after {:?}",
                            p.to_string()
                        ),
                        (_, false) => format!("order: {shown:?} never happened"),
                        _ => format!("order: {shown:?} not found"),
                    });
                    break;
                }
            }
        }
        if diff {
            for w in &self.sc.differential.within.clone() {
                let limit = (w.ms as f64 * sys::time_scale()) as u64;
                let (from, to) = (w.from.to_string(), w.to.to_string());
                let from_d = w
                    .from
                    .detail
                    .as_deref()
                    .map(|d| self.expand(d))
                    .transpose()?;
                let to_d = w.to.detail.as_deref().map(|d| self.expand(d)).transpose()?;
                let Some(i) = tl
                    .iter()
                    .position(|ev| ev_matches(ev, &w.from, from_d.as_deref()))
                else {
                    self.fail(format!("within: {from:?} never happened"));
                    continue;
                };
                match tl[i..]
                    .iter()
                    .find(|ev| ev_matches(ev, &w.to, to_d.as_deref()))
                {
                    Some(ev) => {
                        let ms = ev.mono.saturating_sub(tl[i].mono) / 1_000_000;
                        if ms > limit {
                            self.fail(format!(
                                "within: {to:?} came {ms} ms after {from:?}, more than {limit} ms"
                            ));
                        }
                    }
                    None => self.fail(format!("within: {to:?} never happened after {from:?}")),
                }
            }
        }
        for pat in &e.never {
            let Some(pat) = pattern_for(pat, diff) else {
                continue;
            };
            let detail = pat.detail.as_deref().map(|d| self.expand(d)).transpose()?;
            if let Some(ev) = tl.iter().find(|ev| ev_matches(ev, &pat, detail.as_deref())) {
                self.fail(format!(
                    "never: {:?} happened: {} {}",
                    show(&pat, detail.as_deref()),
                    ev.source,
                    ev.fields
                ));
            }
        }
        Ok(())
    }
}

/// The pattern with its detail expanded, as the message shows it.
fn show(p: &Pattern, detail: Option<&str>) -> String {
    let mut s = format!("{}:{}", p.source, p.event);
    if let Some(d) = detail {
        s.push(':');
        s.push_str(d);
    }
    s
}
