//! The parts of a `deploy` block that are not about instances: plugins in
//! their roles (health, traffic, analysis, notify), the public URL's checks
//! (verify, probe) and a canary's weight steps.

use std::time::Duration;

use super::interp::Template;
use super::model::{Analysis, CanaryStep, Grants, Metric, MetricKind, Notify, OnNoData, Probe, Role, Verify};
use super::parser::Parser;
use super::plugin_step::GRANT_NODES;
use super::reader::{Node, Spanned};

/// Properties of `analysis` that are the deployment's, not the plugin's.
const ANALYSIS_PROPS: &[&str] = &["window", "min-samples", "on-no-data"];

/// Deploy event kinds a notifier can be limited to with `on`.
pub const EVENT_KINDS: &[&str] =
    &["started", "step-reached", "verdict", "waiting-for-approval", "promoted", "rolled-back", "failed", "succeeded"];

impl Parser {
    /// `health "plugin" …` or `traffic "plugin" …`, with `allow-*` children.
    /// In `health`, `attempts` and `interval` are the deployment's (it repeats
    /// the plugin's single check); every other property is the plugin's.
    pub(super) fn role(&mut self, node: Node, health: bool) -> Option<Role> {
        self.role_with(node, health, &[], &[])
    }

    /// A role whose node also holds the deployment's own properties
    /// (`reserved`, read by the caller) and children (`children`).
    fn role_with(&mut self, node: Node, health: bool, reserved: &[&str], children: &[&str]) -> Option<Role> {
        node.check_arg_count(1, &mut self.errs);
        let uses = node.arg_string("a plugin name or path", &mut self.errs)?;
        let mut config: Vec<(String, Template)> = Vec::new();
        let (mut attempts, mut interval) = (30, Duration::from_secs(1));
        for (key, entry) in node.props() {
            match key {
                _ if reserved.contains(&key) => {}
                "attempts" if health => {
                    attempts = node.entry_u32(entry, key, &mut self.errs).map_or(attempts, |a| a.value.max(1))
                }
                "interval" if health => {
                    interval = node.entry_duration(entry, key, &mut self.errs).map_or(interval, |d| d.value)
                }
                _ if config.iter().any(|(k, _)| k == key) => {
                    self.errs.syntax(&node.entry_loc(entry), format!("`{key}` is given twice"), "again here")
                }
                _ => {
                    if let Some(text) = node.entry_text(entry, key, &mut self.errs) {
                        config.push((key.to_string(), self.template(&text)));
                    }
                }
            }
        }
        let mut grants = Grants::default();
        for child in node.children() {
            match child.name() {
                name if GRANT_NODES.contains(&name) => self.grant(child, &mut grants),
                name if children.contains(&name) => {}
                other => {
                    let known: Vec<&str> = GRANT_NODES.iter().chain(children).copied().collect();
                    self.unknown(child, &format!("a `{}` block", node.name()), &known, other)
                }
            }
        }
        Some(Role { uses, config, grants, attempts, interval })
    }

    pub(super) fn verify(&mut self, node: Node) -> Option<Verify> {
        self.leaf(node, &["url", "status", "body-contains", "times", "timeout"], 0);
        let Some(url) = node.prop_string("url", &mut self.errs).map(|u| self.template(&u)) else {
            self.missing(
                node,
                "verify",
                "a url",
                "verify url=\"http://127.0.0.1:8080/version\" body-contains=\"${git.sha}\"",
            );
            return None;
        };
        let status = node.prop("status").and_then(|e| node.entry_u32(e, "status", &mut self.errs));
        let times = node.prop("times").and_then(|e| node.entry_u32(e, "times", &mut self.errs));
        let timeout = node.prop("timeout").and_then(|e| node.entry_duration(e, "timeout", &mut self.errs));
        Some(Verify {
            url,
            status: status.map_or(200, |s| u16::try_from(s.value).unwrap_or(200)),
            body_contains: node.prop_string("body-contains", &mut self.errs).map(|b| self.template(&b)),
            times: times.map_or(5, |t| t.value.max(1)),
            timeout: timeout.map_or(Duration::from_secs(30), |t| t.value),
        })
    }

    pub(super) fn probe(&mut self, node: Node) -> Option<Probe> {
        self.leaf(node, &["url", "rate", "max-failures"], 0);
        let Some(url) = node.prop_string("url", &mut self.errs).map(|u| self.template(&u)) else {
            self.missing(node, "probe", "a url", "probe url=\"http://127.0.0.1:8080/\" rate=100 max-failures=0");
            return None;
        };
        let rate = node.prop("rate").and_then(|e| node.entry_u32(e, "rate", &mut self.errs));
        let max = node.prop("max-failures").and_then(|e| node.entry_u32(e, "max-failures", &mut self.errs));
        Some(Probe {
            url,
            rate: rate.map_or(50, |r| r.value.clamp(1, 10_000)),
            max_failures: max.map_or(0, |m| u64::from(m.value)),
        })
    }

    /// `analysis "plugin" window="1m" min-samples=100 on-no-data="fail" { metric "error-rate" max=0.01 }`.
    pub(super) fn analysis(&mut self, node: Node) -> Option<Spanned<Analysis>> {
        let role = self.role_with(node, false, ANALYSIS_PROPS, &["metric"]);
        let window = node.prop("window").and_then(|e| node.entry_duration(e, "window", &mut self.errs));
        let min_samples = node.prop("min-samples").and_then(|e| node.entry_u32(e, "min-samples", &mut self.errs));
        let on_no_data = node.prop_string("on-no-data", &mut self.errs).and_then(|v| match v.value.as_str() {
            "fail" => Some(OnNoData::Fail),
            "pause" => Some(OnNoData::Pause),
            "pass" => Some(OnNoData::Pass),
            other => {
                let help = Some("on-no-data=\"fail\" (roll back), \"pause\" (wait for a person) or \"pass\"".into());
                self.errs.invalid(&v.loc, "on-no-data", format!("`{other}` is not fail, pause or pass"), help);
                None
            }
        });
        // What happens without data is always said, never assumed.
        if min_samples.is_none() || node.prop("on-no-data").is_none() {
            self.missing(
                node,
                "analysis",
                "min-samples and on-no-data",
                "analysis \"nginx-log\" … window=\"1m\" min-samples=100 on-no-data=\"fail\" { … }",
            );
        }
        let mut metrics = Vec::new();
        let written: Vec<Node> = node.children().into_iter().filter(|c| c.name() == "metric").collect();
        for child in &written {
            metrics.extend(self.metric(*child));
        }
        if written.is_empty() {
            self.missing(node, "analysis", "a metric", "metric \"error-rate\" max=0.01");
        }
        let window = window.map_or(Duration::from_secs(60), |w| w.value);
        if window < Duration::from_secs(1) {
            self.errs.invalid(&node.name_loc(), "window", "a window lasts at least 1s", None);
        }
        Some(Spanned {
            value: Analysis {
                role: role?,
                window,
                min_samples: u64::from(min_samples?.value),
                on_no_data: on_no_data?,
                metrics,
            },
            loc: node.name_loc(),
        })
    }

    fn metric(&mut self, node: Node) -> Option<Metric> {
        self.leaf(node, &["max"], 1);
        let name = node.arg_string("a metric name", &mut self.errs)?;
        let kind = match name.value.as_str() {
            "error-rate" => MetricKind::ErrorRate,
            "p50" => MetricKind::P50,
            "p90" => MetricKind::P90,
            "p99" => MetricKind::P99,
            other => {
                let help = super::error::did_you_mean(other, MetricKind::NAMES.iter().copied())
                    .or_else(|| Some(super::error::expected_one_of(MetricKind::NAMES)));
                self.errs.invalid(&name.loc, "metric", format!("`{other}` is not a metric"), help);
                return None;
            }
        };
        let Some(max) = node.prop("max") else {
            let example = if kind == MetricKind::ErrorRate {
                "metric \"error-rate\" max=0.01"
            } else {
                "metric \"p99\" max=\"300ms\""
            };
            self.missing(node, &format!("metric \"{}\"", name.value), "a max", example);
            return None;
        };
        let value = match kind {
            MetricKind::ErrorRate => {
                let ratio = match max.value() {
                    kdl::KdlValue::Float(f) if (0.0..=1.0).contains(f) => Some(*f),
                    kdl::KdlValue::Integer(i @ (0 | 1)) => Some(*i as f64),
                    _ => None,
                };
                if ratio.is_none() {
                    let help = Some("max=0.01 fails the canary above 1% of its requests".to_string());
                    self.errs.invalid(&node.entry_loc(max), "max", "`error-rate` takes a ratio from 0 to 1", help);
                }
                ratio
            }
            _ => node.entry_duration(max, "max", &mut self.errs).map(|d| d.value.as_secs_f64() * 1000.0),
        };
        Some(Metric { kind, max: value? })
    }

    /// `notify "plugin" on="failed,rolled-back" …`.
    pub(super) fn notify(&mut self, node: Node) -> Option<Notify> {
        let role = self.role_with(node, false, &["on"], &[])?;
        let mut on = Vec::new();
        if let Some(list) = node.prop_string("on", &mut self.errs) {
            for kind in list.value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                if !EVENT_KINDS.contains(&kind) {
                    let help = super::error::did_you_mean(kind, EVENT_KINDS.iter().copied())
                        .or_else(|| Some(super::error::expected_one_of(EVENT_KINDS)));
                    self.errs.invalid(&list.loc, "on", format!("`{kind}` is not a deploy event"), help);
                }
                on.push(kind.to_string());
            }
        }
        Some(Notify { role, on })
    }

    /// `steps { weight 10 pause="2m"; weight 50 approve=#true; weight 100 }`.
    pub(super) fn canary_steps(&mut self, node: Node) -> Option<Spanned<Vec<CanaryStep>>> {
        node.check_props(&[], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        let mut steps: Vec<CanaryStep> = Vec::new();
        let mut last = None;
        for child in node.children() {
            if child.name() != "weight" {
                self.unknown(child, "a `steps` block", &["weight"], child.name());
                continue;
            }
            self.leaf(child, &["pause", "approve", "timeout"], 1);
            let Some(e) = child.args().next() else {
                child.arg_string("a percentage", &mut self.errs);
                continue;
            };
            let Some(weight) = child.entry_u32(e, "weight", &mut self.errs) else { continue };
            let previous = steps.last().map_or(0, |s| s.weight);
            if weight.value == 0 || weight.value > 100 || weight.value <= previous {
                let why = format!("weights go up from 1 to 100 (the one before is {previous})");
                self.errs.invalid(&weight.loc, "weight", why, None);
            }
            let pause = child.prop("pause").and_then(|e| child.entry_duration(e, "pause", &mut self.errs));
            let approve = child.prop("approve").and_then(|e| child.entry_bool(e, "approve", &mut self.errs));
            let timeout = child.prop("timeout").and_then(|e| child.entry_duration(e, "timeout", &mut self.errs));
            last = Some(weight.loc.clone());
            steps.push(CanaryStep {
                weight: weight.value,
                pause: pause.map_or(Duration::ZERO, |p| p.value),
                approve: approve.unwrap_or(false),
                timeout: timeout.map_or(Duration::from_secs(3600), |t| t.value),
            });
        }
        match (steps.last(), last) {
            (Some(s), Some(at)) if s.weight != 100 => {
                let help = Some("end with `weight 100`: promotion sends all traffic to the new version".into());
                self.errs.invalid(&at, "steps", "the last step does not reach 100", help);
            }
            (None, _) => self.missing(node, "steps", "a weight", "weight 10 pause=\"2m\""),
            _ => {}
        }
        Some(Spanned { value: steps, loc: node.name_loc() })
    }
}
