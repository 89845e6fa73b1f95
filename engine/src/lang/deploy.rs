//! `deploy "name" strategy="blue-green|rolling|canary" { … }` in a stage: a
//! step of its own that puts a new version of a service in front of its users.
//! The roles, checks and canary steps inside it are read in `deploy_parts`.

use std::collections::HashMap;
use std::time::Duration;

use kdl::KdlValue;

use super::error::{LangError, did_you_mean};
use super::interp::Template;
use super::model::{
    Action, Analysis, Canary, CanaryStep, Deploy, Env, Instance, Notify, Probe, Retry, Role, Rolling, RunCommand, Slot,
    Step, Strategy, Verify,
};
use super::parser::Parser;
use super::reader::{Node, Spanned};

const DEPLOY_NODES: &[&str] = &[
    "approvers",
    "instance",
    "slots",
    "replicas",
    "batch",
    "steps",
    "health",
    "traffic",
    "analysis",
    "notify",
    "verify",
    "drain",
    "keep-previous",
    "probe",
    "needs",
    "when",
    "timeout",
];

const STRATEGIES: &[&str] = &["blue-green", "rolling", "canary"];

/// What a `deploy` block said, before it is checked as a whole.
#[derive(Default)]
struct Parts {
    instance: Option<Instance>,
    slots: Option<Vec<Slot>>,
    replicas: Option<Spanned<u32>>,
    batch: Option<Spanned<u32>>,
    steps: Option<Spanned<Vec<CanaryStep>>>,
    health: Option<Role>,
    traffic: Option<Role>,
    analysis: Option<Spanned<Analysis>>,
    notify: Vec<Notify>,
    verify: Option<Verify>,
    probe: Option<Probe>,
    approvers: Option<super::model::Approvers>,
}

impl Parser {
    /// A `deploy` node, as the step it is.
    pub(super) fn deploy(&mut self, node: Node) -> Option<Step> {
        node.check_props(&["strategy", "version"], &mut self.errs);
        node.check_arg_count(1, &mut self.errs);
        let name = self.name(node, "deploy")?;
        let strategy = node.prop_string("strategy", &mut self.errs);
        match &strategy {
            Some(s) if !STRATEGIES.contains(&s.value.as_str()) => {
                let help = did_you_mean(&s.value, STRATEGIES.iter().copied())
                    .or_else(|| Some(super::error::expected_one_of(STRATEGIES)));
                self.errs.invalid(&s.loc, "strategy", format!("`{}` is not a strategy", s.value), help);
            }
            Some(_) => {}
            None => self.missing(node, "deploy", "a strategy", "deploy \"orders\" strategy=\"blue-green\" { … }"),
        }
        let kind = strategy.as_ref().map_or("blue-green", |s| s.value.as_str());
        let version = node.prop_string("version", &mut self.errs).map(|v| self.template(&v));
        let mut step = Step {
            name: name.value.clone(),
            loc: name.loc.clone(),
            action: Action::Run(RunCommand { script: Template::literal("", node.loc()), shell: None }),
            needs: Vec::new(),
            when: Vec::new(),
            retry: Retry::default(),
            timeout: None,
            continue_on_error: false,
            env: Env::default(),
            container: None,
            workdir: None,
            cache: None,
        };
        let mut p = Parts::default();
        let (mut drain, mut keep_previous) = (Duration::from_secs(30), Duration::ZERO);
        for child in node.children() {
            let only = |s: &str| -> Option<&'static str> {
                match child.name() {
                    "replicas" | "batch" if s != "rolling" => Some("rolling"),
                    "steps" | "analysis" | "approvers" if s != "canary" => Some("canary"),
                    _ => None,
                }
            };
            if let Some(needed) = only(kind) {
                let help = Some(format!("`{}` belongs to strategy=\"{needed}\"", child.name()));
                self.errs.invalid(
                    &child.name_loc(),
                    child.name(),
                    format!("a {kind} deployment has no `{}`", child.name()),
                    help,
                );
                continue;
            }
            match child.name() {
                "instance" => p.instance = self.instance(child),
                "slots" => p.slots = Some(self.slots(child)),
                "replicas" => p.replicas = self.count(child),
                "batch" => p.batch = self.count(child),
                "steps" => p.steps = self.canary_steps(child),
                "health" => p.health = self.role(child, true),
                "traffic" => p.traffic = self.role(child, false),
                "analysis" => p.analysis = self.analysis(child),
                "notify" => p.notify.extend(self.notify(child)),
                "verify" => p.verify = self.verify(child),
                "probe" => p.probe = self.probe(child),
                "approvers" => self.approvers_node(child, &mut p.approvers),
                "drain" | "keep-previous" => {
                    self.leaf(child, &[], 1);
                    let d = child.args().next().and_then(|e| child.entry_duration(e, child.name(), &mut self.errs));
                    match (d, child.name()) {
                        (Some(d), "drain") => drain = d.value,
                        (Some(d), _) => keep_previous = d.value,
                        (None, _) if child.args().next().is_none() => {
                            child.arg_string("a duration", &mut self.errs);
                        }
                        _ => {}
                    }
                }
                "needs" => step.needs.extend(self.needs(child)),
                "when" => step.when.extend(self.condition(child)),
                "timeout" => step.timeout = self.timeout(child),
                other => self.unknown(child, "a `deploy` block", DEPLOY_NODES, other),
            }
        }
        let example = match () {
            () if p.instance.is_none() => Some(("an instance", "instance \"docker\" image=\"orders:1\" port=8080")),
            () if p.slots.is_none() => Some(match kind {
                "rolling" => ("slots", "slots ports=\"8101-8105\""),
                _ => ("slots", "slots { slot \"blue\" port=8081; slot \"green\" port=8082 }"),
            }),
            () if p.health.is_none() => Some(("a health check", "health \"http-check\" path=\"/health\"")),
            () if p.traffic.is_none() => {
                Some(("a traffic switch", "traffic \"nginx-switch\" file=\"…\" upstream=\"app\" …"))
            }
            () if kind == "rolling" && !node.children().iter().any(|c| c.name() == "replicas") => {
                Some(("a number of replicas", "replicas 4"))
            }
            () if kind == "canary" && p.steps.is_none() => {
                Some(("weight steps", "steps { weight 10 pause=\"2m\"; weight 50 approve=#true; weight 100 }"))
            }
            () => None,
        };
        if let Some((what, help)) = example {
            self.missing(node, &format!("deploy \"{}\"", name.value), what, help);
            return None;
        }
        let slots: Vec<Slot> = p.slots.unwrap_or_default();
        let strategy = self.strategy(node, kind, &slots, p.replicas, p.batch, p.steps, p.analysis)?;
        step.action = Action::Deploy(Box::new(Deploy {
            name: name.value,
            strategy,
            version,
            instance: p.instance?,
            slots,
            health: p.health?,
            traffic: p.traffic?,
            verify: p.verify,
            drain,
            keep_previous,
            probe: p.probe,
            notify: p.notify,
            approvers: p.approvers,
            loc: node.name_loc(),
        }));
        Some(step)
    }

    /// The strategy with its own settings, checked against the slots.
    #[allow(clippy::too_many_arguments)]
    fn strategy(
        &mut self,
        node: Node,
        kind: &str,
        slots: &[Slot],
        replicas: Option<Spanned<u32>>,
        batch: Option<Spanned<u32>>,
        steps: Option<Spanned<Vec<CanaryStep>>>,
        analysis: Option<Spanned<Analysis>>,
    ) -> Option<Strategy> {
        let at = node.name_loc();
        match kind {
            "rolling" => {
                let replicas = replicas?.value;
                let batch = batch.map_or(1, |b| b.value).min(replicas);
                let needed = (replicas + batch) as usize;
                if slots.len() < needed {
                    let help = Some(format!(
                        "a new instance starts before an old one stops: {replicas} replicas in batches of {batch} need {needed} slots, e.g. slots ports=\"8101-{}\"",
                        8100 + needed
                    ));
                    self.errs.invalid(&at, "slots", format!("{} slot(s) is not enough", slots.len()), help);
                }
                Some(Strategy::Rolling(Rolling { replicas, batch }))
            }
            "canary" => {
                if slots.len() != 2 {
                    self.errs.invalid(&at, "slots", "a canary runs in exactly two slots (old and new)", None);
                }
                let steps = steps?;
                let analysis = analysis.map(|a| {
                    if !steps.value.iter().any(|s| !s.pause.is_zero()) {
                        let help = Some("give a step a pause: weight 10 pause=\"2m\"".to_string());
                        self.errs.invalid(&a.loc, "analysis", "analysis runs during pauses, and no step pauses", help);
                    }
                    a.value
                });
                Some(Strategy::Canary(Box::new(Canary { steps: steps.value, analysis })))
            }
            _ => {
                if slots.len() != 2 {
                    self.errs.invalid(&at, "slots", "blue-green needs exactly two slots", None);
                }
                Some(Strategy::BlueGreen)
            }
        }
    }

    /// `replicas 4`, `batch 1`: a count of at least one.
    fn count(&mut self, node: Node) -> Option<Spanned<u32>> {
        self.leaf(node, &[], 1);
        let Some(e) = node.args().next() else {
            node.arg_string("a number", &mut self.errs);
            return None;
        };
        let n = node.entry_u32(e, node.name(), &mut self.errs)?;
        if n.value == 0 || n.value > 64 {
            self.errs.invalid(&n.loc, node.name(), "a number from 1 to 64", None);
            return None;
        }
        Some(n)
    }

    fn instance(&mut self, node: Node) -> Option<Instance> {
        let kind = node.arg_string("an instance kind", &mut self.errs)?;
        node.check_arg_count(1, &mut self.errs);
        match kind.value.as_str() {
            "docker" => {
                node.check_props(&["image", "port", "pull", "cmd", "network", "memory"], &mut self.errs);
                let image = node.prop_string("image", &mut self.errs).map(|i| self.template(&i));
                let port = node.prop("port").and_then(|e| self.port(node, e));
                let mut env = Env::default();
                for child in node.children() {
                    match child.name() {
                        "env" => self.env_block(child, &mut env),
                        other => self.unknown(child, "an `instance` block", &["env"], other),
                    }
                }
                let (Some(image), Some(port)) = (image, port) else {
                    self.missing(
                        node,
                        "instance \"docker\"",
                        "an image and a port",
                        "instance \"docker\" image=\"orders:1\" port=8080",
                    );
                    return None;
                };
                let memory = node.prop_string("memory", &mut self.errs).and_then(|m| {
                    let size = super::parse_size(&m.value);
                    if size.is_none() {
                        self.errs.invalid(&m.loc, "memory", format!("`{}` is not a size", m.value), None);
                    }
                    size
                });
                Some(Instance::Docker {
                    image,
                    pull: self.pull_policy(node),
                    port,
                    env,
                    cmd: node.prop_string("cmd", &mut self.errs).map(|c| self.template(&c)),
                    network: node.prop_string("network", &mut self.errs).map(|n| n.value),
                    memory,
                })
            }
            "command" => {
                node.check_props(&["start", "stop", "status"], &mut self.errs);
                let mut env = Env::default();
                for child in node.children() {
                    match child.name() {
                        "env" => self.env_block(child, &mut env),
                        other => self.unknown(child, "an `instance` block", &["env"], other),
                    }
                }
                let command = |p: &mut Parser, key: &str| node.prop_string(key, &mut p.errs).map(|c| p.template(&c));
                let Some(start) = command(self, "start") else {
                    self.missing(
                        node,
                        "instance \"command\"",
                        "a start command",
                        "instance \"command\" start=\"./app --port ${slot.port}\"",
                    );
                    return None;
                };
                Some(Instance::Command { start, stop: command(self, "stop"), status: command(self, "status"), env })
            }
            other => {
                let help = Some("instance \"docker\" image=… port=…, or instance \"command\" start=…".to_string());
                self.errs.invalid(&kind.loc, "instance", format!("`{other}` is not an instance kind"), help);
                None
            }
        }
    }

    /// `slots { slot "blue" port=8081; … }`, or `slots ports="8101-8106"`
    /// for slots named `1`, `2`, … on consecutive ports.
    fn slots(&mut self, node: Node) -> Vec<Slot> {
        node.check_props(&["ports"], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        if let Some(range) = node.prop_string("ports", &mut self.errs) {
            node.check_no_children(&mut self.errs);
            let parsed = range.value.split_once('-').and_then(|(a, b)| {
                let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
                (a > 0 && a <= b && b - a < 64).then_some((a, b))
            });
            let Some((first, last)) = parsed else {
                let help = Some("ports=\"8101-8106\": at most 64 ports, the first one lowest".to_string());
                self.errs.invalid(&range.loc, "ports", format!("`{}` is not a port range", range.value), help);
                return Vec::new();
            };
            return (first..=last)
                .enumerate()
                .map(|(i, port)| Slot { name: (i + 1).to_string(), port, loc: range.loc.clone() })
                .collect();
        }
        let mut slots: Vec<Slot> = Vec::new();
        let mut seen: HashMap<u16, String> = HashMap::new();
        for child in node.children() {
            if child.name() != "slot" {
                self.unknown(child, "a `slots` block", &["slot"], child.name());
                continue;
            }
            self.leaf(child, &["port"], 1);
            let Some(name) = self.name(child, "slot") else { continue };
            let Some(port) = child.prop("port").and_then(|e| self.port(child, e)) else {
                self.missing(child, &format!("slot \"{}\"", name.value), "a port", "slot \"blue\" port=8081");
                continue;
            };
            if slots.iter().any(|s| s.name == name.value) {
                self.errs.push(super::parser::duplicate("slot", &name.value, &name.loc, None));
            }
            if let Some(other) = seen.insert(port, name.value.clone()) {
                self.errs.invalid(&name.loc, "port", format!("slot `{other}` has port {port} already"), None);
            }
            slots.push(Slot { name: name.value, port, loc: name.loc });
        }
        slots
    }

    fn port(&mut self, node: Node, e: &kdl::KdlEntry) -> Option<u16> {
        match e.value() {
            KdlValue::Integer(p) if (1..=65535).contains(p) => Some(*p as u16),
            _ => {
                self.errs.invalid(&node.entry_loc(e), "port", "a port is a number from 1 to 65535", None);
                None
            }
        }
    }

    pub(super) fn missing(&mut self, node: Node, what_node: &str, what: &str, help: &str) {
        self.errs.push(LangError::Missing {
            node: what_node.to_string(),
            what: what.to_string(),
            src: node.src.named(),
            span: node.kdl.span(),
            help: Some(help.to_string()),
        });
    }
}
