//! The run report: one self-contained HTML page per run, written next to its
//! record (`.pipe/runs/<run>/report.html`). A timeline of the steps on a time
//! axis (waits, attempts, retries, cache hits, skips and failures each in
//! their own colour), the step graph, and every step with its reason, its
//! deployment's phases and its log folded under it. No network is needed to
//! view it: styles inline, no external script, and the little script there is
//! only opens the step a click on the timeline points to.

mod graph;
mod timeline;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::state::record::{log_path, run_dir};
use crate::state::{RunRecord, StateError, Status, StepRecord, write_atomic};

/// Log lines shown per step (the end of the log).
const LOG_LINES: usize = 400;

/// Where a run's report is.
pub fn path(root: &Path, run: &str) -> PathBuf {
    run_dir(root, run).join("report.html")
}

/// Renders the report of `run` and writes it next to its record.
pub fn write(root: &Path, run: &RunRecord) -> Result<PathBuf, StateError> {
    let dir = run_dir(root, &run.id);
    let html = render(run, |step| tail(&log_path(&dir, step)));
    let path = path(root, &run.id);
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

fn tail(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let skipped = lines.len().saturating_sub(LOG_LINES);
    let mut out = String::new();
    if skipped > 0 {
        let _ = writeln!(out, "… {skipped} earlier lines: pipe logs");
    }
    out.push_str(&lines[skipped..].join("\n"));
    Some(out)
}

/// The page, from the record and each step's log.
pub fn render(run: &RunRecord, logs: impl Fn(&str) -> Option<String>) -> String {
    let mut h = String::with_capacity(64 << 10);
    let title = format!("{} · run {}", run.pipeline, run.id);
    let count = |s: Status| run.steps.iter().filter(|r| r.status == s).count();
    let cached = run.steps.iter().filter(|s| is_cached(s)).count();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(&title)
    );
    let _ = writeln!(
        h,
        "<header><h1>{} <span class=\"badge {}\">{}</span></h1>\
         <p>run <code>{}</code> · {} · {} steps: {} succeeded{}, {} failed, {} skipped, {} cancelled\
         {} · started {}</p></header>",
        esc(&run.pipeline),
        run.status.as_str(),
        run.status.as_str(),
        esc(&run.id),
        duration(run.duration_ms),
        run.steps.len(),
        count(Status::Succeeded),
        if cached > 0 { format!(" ({cached} from the cache)") } else { String::new() },
        count(Status::Failed),
        count(Status::Skipped),
        count(Status::Cancelled),
        if run.git_sha.is_empty() {
            String::new()
        } else {
            format!(" · git <code>{}</code> on <code>{}</code>", esc(short(&run.git_sha)), esc(&run.git_branch))
        },
        esc(&run.started_at),
    );
    h.push_str("<section><h2>Timeline</h2>");
    h.push_str(LEGEND);
    h.push_str(&timeline::svg(run));
    h.push_str("</section>\n<section><h2>Graph</h2>");
    h.push_str(&graph::svg(run));
    h.push_str("</section>\n<section><h2>Steps</h2>\n");
    for step in &run.steps {
        step_block(&mut h, step, logs(&step.id));
    }
    h.push_str("</section>\n");
    let _ = writeln!(h, "<script>{SCRIPT}</script></body></html>");
    h
}

fn step_block(h: &mut String, s: &StepRecord, log: Option<String>) {
    let class = class_of(s);
    let took = if s.attempts > 0 { duration(s.duration_ms) } else { "-".into() };
    let attempts = if s.attempts > 1 { format!(" · {} attempts", s.attempts) } else { String::new() };
    let _ = write!(
        h,
        "<details id=\"{}\" class=\"step\"{}><summary><span class=\"dot {class}\"></span><b>{}</b> \
         <span class=\"status {class}\">{}</span> <span class=\"dim\">{took}{attempts}</span>",
        anchor(&s.id),
        if s.is_failure() { " open" } else { "" },
        esc(&s.id),
        label_of(s),
    );
    if let Some(r) = &s.reason {
        let _ = write!(h, " <span class=\"reason\">{}</span>", esc(r));
    }
    h.push_str("</summary>");
    if let Some(cmd) = &s.command {
        let _ = write!(h, "<p class=\"cmd\"><code>{}</code></p>", esc(cmd));
    }
    if !s.outputs.is_empty() {
        h.push_str("<p class=\"dim\">outputs: ");
        for (k, v) in &s.outputs {
            let _ = write!(h, "<code>{}={}</code> ", esc(k), esc(v));
        }
        h.push_str("</p>");
    }
    if let Some(d) = &s.details {
        deploy_details(h, d);
    }
    match log {
        Some(text) if !text.is_empty() => {
            let _ = write!(h, "<pre class=\"log\">{}</pre>", esc(&text));
        }
        _ => h.push_str("<p class=\"dim\">no log lines</p>"),
    }
    h.push_str("</details>\n");
}

/// A deployment's phases, its probe per phase and its analysis verdicts.
fn deploy_details(h: &mut String, d: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    if let Some(phases) = d["phases"].as_array().filter(|p| !p.is_empty()) {
        let _ = write!(
            h,
            "<p>{} {} · <b>{}</b></p><table><tr><th>phase</th><th>ms</th><th>what happened</th></tr>",
            esc(&text(&d["strategy"])),
            esc(&text(&d["version"])),
            esc(&text(&d["outcome"]))
        );
        for p in phases {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&text(&p["phase"])),
                p["ms"],
                esc(&text(&p["note"]))
            );
        }
        h.push_str("</table>");
    }
    if let Some(phases) = d["probe"]["phases"].as_array() {
        let _ = write!(
            h,
            "<p>probe {} at {}/s</p><table><tr><th>phase</th><th>requests</th><th>failed</th>\
             <th>strict</th><th>p50 ms</th><th>p99 ms</th></tr>",
            esc(&text(&d["probe"]["url"])),
            d["probe"]["rate"]
        );
        let total = serde_json::json!(["total", d["probe"]["total"]]);
        for p in phases.iter().chain(std::iter::once(&total)) {
            let n = &p[1];
            let failed = n["non_2xx"].as_u64().unwrap_or(0) + n["transport_errors"].as_u64().unwrap_or(0);
            let strict = failed + n["retried_ok"].as_u64().unwrap_or(0);
            let ms = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |f| format!("{f:.1}"));
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num{}\">{failed}</td><td class=\"num\">{strict}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(&text(&p[0])),
                n["requests"],
                if failed > 0 { " bad" } else { "" },
                ms(&n["p50_ms"]),
                ms(&n["p99_ms"])
            );
        }
        h.push_str("</table>");
    }
    if let Some(verdicts) = d["verdicts"].as_array().filter(|v| !v.is_empty()) {
        h.push_str("<table><tr><th>verdict</th><th>weight</th><th>why</th></tr>");
        for v in verdicts {
            let outcome = text(&v["outcome"]);
            let _ = write!(
                h,
                "<tr><td class=\"{}\">{}</td><td class=\"num\">{}%</td><td>{}</td></tr>",
                if outcome == "fail" { "bad" } else { "" },
                esc(&outcome),
                v["weight"],
                esc(&text(&v["reason"]))
            );
        }
        h.push_str("</table>");
    }
}

/// `850ms`, `3.2s`, `2m 05s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The CSS class (and colour) of a step's outcome.
pub(crate) fn class_of(s: &StepRecord) -> &'static str {
    match s.status {
        _ if is_cached(s) => "cached",
        Status::Succeeded if s.reason.as_deref() == Some("succeeded in the earlier run") => "reused",
        Status::Succeeded => "ok",
        Status::Failed if s.allowed_failure => "allowed",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
        Status::Cancelled => "cancelled",
        Status::Pending | Status::Running => "pending",
    }
}

fn label_of(s: &StepRecord) -> &'static str {
    match class_of(s) {
        "cached" => "cached",
        "reused" => "reused",
        "allowed" => "failed (allowed)",
        _ => s.status.as_str(),
    }
}

pub fn is_cached(s: &StepRecord) -> bool {
    s.details.as_ref().is_some_and(|d| d.get("cache").is_some_and(|c| c["hit"] == true))
}

/// An id usable in HTML and in a URL fragment.
pub(crate) fn anchor(step: &str) -> String {
    let safe: String = step.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("step-{safe}")
}

pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// At most `n` characters, cut at the end.
pub(crate) fn clip_end(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    format!("{}…", s.chars().take(n - 1).collect::<String>())
}

/// At most `n` characters, cut at the start (a step id's end says the most).
pub(crate) fn clip_start(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        return s.to_string();
    }
    format!("…{}", s.chars().skip(count - (n - 1)).collect::<String>())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

const LEGEND: &str = "<p class=\"legend\"><span class=\"key wait\"></span>waiting for a free slot \
    <span class=\"key ok\"></span>succeeded <span class=\"key retry\"></span>failed attempt, retried \
    <span class=\"key failed\"></span>failed <span class=\"key cached\"></span>from the cache \
    <span class=\"key reused\"></span>reused from an earlier run <span class=\"key cancelled\"></span>cancelled \
    <span class=\"key skipped\"></span>skipped</p>";

const STYLE: &str = "
:root{--ok:#2e9d5b;--failed:#d6453d;--retry:#f0a030;--cached:#2f8fb8;--reused:#8a7cc2;--skipped:#b9bec6;
--cancelled:#c98a2b;--allowed:#e0b040;--wait:#e4e7eb;--pending:#cfd4da;--fg:#1d2330;--dim:#6b7380;--line:#e3e6ea}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);margin:0 auto;max-width:1280px;padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:16px;margin:24px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f4f6;padding:1px 4px;border-radius:3px}
.badge{font-size:13px;padding:2px 8px;border-radius:10px;color:#fff;vertical-align:middle}
.badge.succeeded{background:var(--ok)}.badge.failed{background:var(--failed)}.badge.interrupted,.badge.running{background:var(--cancelled)}
.dim{color:var(--dim)}.legend{color:var(--dim);font-size:12px}
.key{display:inline-block;width:12px;height:10px;margin:0 4px 0 10px;border-radius:2px;vertical-align:middle}
.key.wait,rect.wait{fill:var(--wait);background:var(--wait)}.key.ok,rect.ok{fill:var(--ok);background:var(--ok)}
.key.retry,rect.retry{fill:var(--retry);background:var(--retry)}.key.failed,rect.failed{fill:var(--failed);background:var(--failed)}
.key.cached,rect.cached{fill:var(--cached);background:var(--cached)}.key.reused,rect.reused{fill:var(--reused);background:var(--reused)}
.key.cancelled,rect.cancelled{fill:var(--cancelled);background:var(--cancelled)}.key.skipped,rect.skipped{fill:var(--skipped);background:var(--skipped)}
rect.allowed{fill:var(--allowed)}rect.pending{fill:var(--pending)}
.scroll{overflow-x:auto;border:1px solid var(--line);border-radius:6px;padding:6px}
svg text{font:11px ui-monospace,Menlo,monospace;fill:var(--fg)}svg .tick{stroke:var(--line)}svg .tl{fill:var(--dim)}
svg a:hover text{text-decoration:underline}svg .edge{stroke:#9aa3ad;fill:none}svg .edge.after{stroke-dasharray:4 3}
svg .node rect{stroke:#fff;rx:4}svg .node text{fill:#fff}svg .node.skipped text,svg .node.pending text{fill:var(--fg)}
details.step{border-bottom:1px solid var(--line);padding:4px 0}details.step summary{cursor:pointer}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px}
.dot.ok{background:var(--ok)}.dot.failed{background:var(--failed)}.dot.cached{background:var(--cached)}.dot.reused{background:var(--reused)}
.dot.skipped{background:var(--skipped)}.dot.cancelled{background:var(--cancelled)}.dot.allowed{background:var(--allowed)}.dot.pending{background:var(--pending)}
.status{font-size:12px;padding:0 6px;border-radius:8px;background:#f3f4f6}.status.failed{color:var(--failed)}.status.cached{color:var(--cached)}
.reason{color:var(--dim)}.cmd{margin:4px 0}
pre.log{background:#0f1420;color:#d8dee9;padding:8px 10px;border-radius:6px;max-height:420px;overflow:auto;font:12px/1.4 ui-monospace,Menlo,monospace;white-space:pre-wrap}
table{border-collapse:collapse;margin:6px 0;font-size:12px}td,th{border:1px solid var(--line);padding:2px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:var(--failed);font-weight:600}
:target{outline:2px solid var(--cached);outline-offset:2px}
";

/// A click on a step in the timeline or the graph opens its details.
const SCRIPT: &str = "
function openTarget(){var id=decodeURIComponent(location.hash.slice(1));var el=id&&document.getElementById(id);
if(el&&el.tagName==='DETAILS'){el.open=true;}}
window.addEventListener('hashchange',openTarget);openTarget();
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RunStatus, Timing};

    fn step(id: &str, status: Status, timing: Option<Timing>) -> StepRecord {
        StepRecord { status, timing, attempts: 1, duration_ms: 40, ..StepRecord::pending(id) }
    }

    #[test]
    fn every_step_is_on_the_page_and_user_text_is_escaped() {
        let run = RunRecord {
            id: "r1".into(),
            pipeline: "p<script>".into(),
            file: "pipe.kdl".into(),
            git_sha: "abc".into(),
            git_branch: "main".into(),
            started_at: "now".into(),
            finished_at: None,
            status: RunStatus::Failed,
            duration_ms: 100,
            pid: 1,
            steps: vec![
                step("build.a", Status::Succeeded, Some(Timing { ready_ms: 0, attempts: vec![[2, 40]] })),
                StepRecord {
                    reason: Some("exit <1>".into()),
                    ..step("build.b", Status::Failed, Some(Timing { ready_ms: 0, attempts: vec![[1, 20], [30, 90]] }))
                },
                step("ship.c", Status::Skipped, None),
            ],
            edges: vec![crate::state::GraphEdge { from: "build.a".into(), to: "ship.c".into(), after: false }],
            trigger: None,
        };
        let html = render(&run, |id| Some(format!("log of {id} </pre>")));
        for id in ["build.a", "build.b", "ship.c"] {
            assert!(html.contains(&format!("id=\"{}\"", anchor(id))), "{id}");
        }
        assert!(!html.contains("<script>\""), "the pipeline name is escaped");
        assert!(html.contains("p&lt;script&gt;") && html.contains("exit &lt;1&gt;") && html.contains("&lt;/pre&gt;"));
        assert!(html.contains("class=\"retry\""), "a failed attempt shows as a retry");
    }
}
