//! Output for people: each log line prefixed with its step, coloured per step;
//! on a terminal, a progress line below; a summary table at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anstream::AutoStream;
use anstyle::{AnsiColor, Style};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::duration;
use crate::event::{Event, Stream, Subscriber};
use crate::state::{RunRecord, RunStatus, Status, StepRecord};
use crate::step::log::{sanitize, sanitize_keep_colors};

/// Above this many steps the summary lists only what did not succeed.
const FULL_SUMMARY_MAX: usize = 40;

const PALETTE: [AnsiColor; 6] =
    [AnsiColor::Cyan, AnsiColor::Magenta, AnsiColor::Blue, AnsiColor::Yellow, AnsiColor::Green, AnsiColor::BrightCyan];

pub struct Human {
    out: AutoStream<std::io::Stdout>,
    width: usize,
    bar: Option<ProgressBar>,
    running: BTreeSet<String>,
    /// Steps waiting for a person, and what for.
    waiting: BTreeMap<String, String>,
}

const DIM: Style = Style::new().dimmed();
const BOLD: Style = Style::new().bold();
const RED: Style = AnsiColor::Red.on_default().bold();
const GREEN: Style = AnsiColor::Green.on_default();
const YELLOW: Style = AnsiColor::Yellow.on_default();

impl Human {
    pub fn new(width: usize) -> Human {
        let interactive = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bar = interactive.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner:.cyan} [{pos}/{len}] {elapsed} {wide_msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Human {
            out: AutoStream::auto(std::io::stdout()),
            width,
            bar,
            running: BTreeSet::new(),
            waiting: BTreeMap::new(),
        }
    }

    fn handle(&mut self, e: &Event) {
        match e {
            Event::RunStarted { run, jobs } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(run.steps.len() as u64);
                }
                let line = format!(
                    "{BOLD}▶ {}{BOLD:#} {DIM}run {} · {} steps · {jobs} at a time{DIM:#}",
                    run.pipeline,
                    run.id,
                    run.steps.len()
                );
                self.print(&line);
            }
            Event::StepStarted { step, attempt, command } => {
                if *attempt == 1 {
                    let prefix = self.prefix(step);
                    for (i, line) in command.lines().enumerate() {
                        let lead = if i == 0 { "$" } else { " " };
                        // The command shows values (step outputs, branch names) in place.
                        let line = sanitize(line);
                        self.print(&format!("{prefix} {DIM}│ {lead} {line}{DIM:#}"));
                    }
                }
                self.running.insert(step.clone());
                self.refresh();
            }
            Event::StepLog { step, stream, line } => {
                let style = if *stream == Stream::Pipe { DIM } else { Style::new() };
                let prefix = self.prefix(step);
                // A step's bytes must not move the cursor over pipe's own lines.
                let line = sanitize_keep_colors(line);
                self.print(&format!("{prefix} {DIM}│{DIM:#} {style}{line}{style:#}"));
            }
            Event::StepRetrying { step, attempt, delay_ms, reason } => {
                let line = format!(
                    "{YELLOW}↻ {step}: attempt {attempt} failed ({reason}), retrying in {}{YELLOW:#}",
                    duration(*delay_ms)
                );
                self.print(&line);
            }
            Event::StepWaiting { step, waiting } => {
                match waiting {
                    Some(what) => {
                        let line = format!("{YELLOW}⏸ {step} waits for {what}{YELLOW:#}");
                        self.print(&line);
                        self.waiting.insert(step.clone(), what.clone());
                    }
                    None => {
                        self.waiting.remove(step);
                    }
                }
                self.refresh();
            }
            Event::StepFinished(rec) => {
                self.running.remove(&rec.id);
                self.waiting.remove(&rec.id);
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
                self.refresh();
                let line = finished_line(rec);
                self.print(&line);
            }
            Event::RunFinished(run) => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                self.summary(run);
            }
        }
    }

    fn prefix(&self, step: &str) -> String {
        let color =
            PALETTE[step.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % PALETTE.len()];
        let style = color.on_default();
        format!("{style}{step:>width$}{style:#}", width = self.width)
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            let names: Vec<String> = self
                .running
                .iter()
                .map(|s| match self.waiting.get(s) {
                    Some(what) => format!("{s} (waiting for {what})"),
                    None => s.clone(),
                })
                .collect();
            bar.set_message(names.join(", "));
        }
    }

    fn print(&mut self, line: &str) {
        let out = &mut self.out;
        match &self.bar {
            Some(bar) => bar.suspend(|| {
                let _ = writeln!(out, "{line}");
            }),
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }

    fn summary(&mut self, run: &RunRecord) {
        let mut lines = vec![String::new()];
        let shown: Vec<&StepRecord> = if run.steps.len() <= FULL_SUMMARY_MAX {
            run.steps.iter().collect()
        } else {
            run.steps.iter().filter(|s| s.status != Status::Succeeded).collect()
        };
        if !shown.is_empty() {
            let w = shown.iter().map(|s| s.id.len()).max().unwrap_or(4).max(4);
            lines.push(format!("{BOLD}{:<w$}  {:<10} {:>9}  ATTEMPTS{BOLD:#}", "STEP", "STATUS", "DURATION"));
            for s in &shown {
                let (style, label) = status_style(s);
                let attempts = if s.attempts > 1 { s.attempts.to_string() } else { String::new() };
                let took = if s.attempts > 0 { duration(s.duration_ms) } else { "-".into() };
                lines.push(format!("{:<w$}  {style}{label:<10}{style:#} {took:>9}  {attempts}", s.id));
            }
        }
        for s in run.steps.iter().filter(|s| s.is_failure() && !s.tail.is_empty()) {
            lines.push(String::new());
            let reason = s.reason.as_deref().unwrap_or("failed");
            lines.push(format!("{RED}✗ {}{RED:#}: {reason}; last lines of its log:", s.id));
            lines.extend(s.tail.iter().map(|l| format!("  {DIM}│{DIM:#} {l}")));
        }
        let count = |st: Status| run.steps.iter().filter(|s| s.status == st).count();
        let (style, word) = match run.status {
            RunStatus::Succeeded => (GREEN.bold(), "succeeded"),
            RunStatus::Interrupted => (YELLOW.bold(), "interrupted"),
            _ => (RED, "failed"),
        };
        lines.push(String::new());
        lines.push(format!(
            "{style}{} {word}{style:#} in {} · {} succeeded, {} failed, {} skipped, {} cancelled · logs: pipe logs {}",
            run.pipeline,
            duration(run.duration_ms),
            count(Status::Succeeded),
            count(Status::Failed),
            count(Status::Skipped),
            count(Status::Cancelled),
            run.id
        ));
        for line in lines {
            self.print(&line);
        }
    }
}

impl Subscriber for Human {
    fn event(&mut self, event: &Event) {
        self.handle(event);
    }
}

fn status_style(s: &StepRecord) -> (Style, &'static str) {
    match s.status {
        Status::Succeeded if crate::report::is_cached(s) => (GREEN, "cached"),
        Status::Succeeded => (GREEN, "ok"),
        Status::Failed if s.allowed_failure => (YELLOW, "failed*"),
        Status::Failed => (RED, "failed"),
        Status::Skipped => (DIM, "skipped"),
        Status::Cancelled => (YELLOW, "cancelled"),
        Status::Pending | Status::Running => (DIM, s.status.as_str()),
    }
}

fn finished_line(rec: &StepRecord) -> String {
    let reason = rec.reason.as_deref().unwrap_or("");
    match rec.status {
        Status::Succeeded if crate::report::is_cached(rec) => {
            let saved = rec.details.as_ref().and_then(|d| d["cache"]["saved_ms"].as_u64()).unwrap_or(0);
            format!("{GREEN}✓{GREEN:#} {} {DIM}cached, saved {}{DIM:#}", rec.id, duration(saved))
        }
        Status::Succeeded => format!("{GREEN}✓{GREEN:#} {} {DIM}{}{DIM:#}", rec.id, duration(rec.duration_ms)),
        Status::Failed if rec.allowed_failure => format!("{YELLOW}✗ {} failed (allowed): {reason}{YELLOW:#}", rec.id),
        Status::Failed => format!("{RED}✗ {} failed: {reason}{RED:#}", rec.id),
        Status::Cancelled => format!("{YELLOW}⊘ {} cancelled{YELLOW:#}", rec.id),
        _ => format!("{DIM}↷ {} skipped: {reason}{DIM:#}", rec.id),
    }
}
