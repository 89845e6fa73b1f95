//! `deploy "name" strategy="blue-green" { … }` in a stage: a step of its own
//! that puts a new version of a service in front of its users.

use std::collections::HashMap;
use std::time::Duration;

use kdl::KdlValue;

use super::error::LangError;
use super::interp::Template;
use super::model::{
    Action, Deploy, Env, Grants, Instance, Probe, Retry, Role, RunCommand, Slot, Step, Strategy, Verify,
};
use super::parser::Parser;
use super::plugin_step::GRANT_NODES;
use super::reader::Node;

const DEPLOY_NODES: &[&str] = &[
    "instance",
    "slots",
    "health",
    "traffic",
    "verify",
    "drain",
    "keep-previous",
    "probe",
    "needs",
    "when",
    "timeout",
];

impl Parser {
    /// A `deploy` node, as the step it is.
    pub(super) fn deploy(&mut self, node: Node) -> Option<Step> {
        node.check_props(&["strategy", "version"], &mut self.errs);
        node.check_arg_count(1, &mut self.errs);
        let name = self.name(node, "deploy")?;
        let strategy = match node.prop_string("strategy", &mut self.errs) {
            Some(s) if s.value == "blue-green" => Strategy::BlueGreen,
            Some(s) => {
                let help = Some("strategy=\"blue-green\"".to_string());
                self.errs.invalid(&s.loc, "strategy", format!("`{}` is not a strategy", s.value), help);
                Strategy::BlueGreen
            }
            None => {
                self.missing(node, "deploy", "a strategy", "deploy \"orders\" strategy=\"blue-green\" { … }");
                Strategy::BlueGreen
            }
        };
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
        };
        let (mut instance, mut slots, mut health, mut traffic, mut verify, mut probe) =
            (None, None, None, None, None, None);
        let (mut drain, mut keep_previous) = (Duration::from_secs(30), Duration::ZERO);
        for child in node.children() {
            match child.name() {
                "instance" => instance = self.instance(child),
                "slots" => slots = Some(self.slots(child)),
                "health" => health = self.role(child, true),
                "traffic" => traffic = self.role(child, false),
                "verify" => verify = self.verify(child),
                "probe" => probe = self.probe(child),
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
            () if instance.is_none() => Some(("an instance", "instance \"docker\" image=\"orders:1\" port=8080")),
            () if slots.is_none() => Some(("slots", "slots { slot \"blue\" port=8081; slot \"green\" port=8082 }")),
            () if health.is_none() => Some(("a health check", "health \"http-check\" path=\"/health\"")),
            () if traffic.is_none() => {
                Some(("a traffic switch", "traffic \"nginx-switch\" file=\"…\" upstream=\"app\" …"))
            }
            () => None,
        };
        if let Some((what, help)) = example {
            self.missing(node, &format!("deploy \"{}\"", name.value), what, help);
            return None;
        }
        let slots: Vec<Slot> = slots.unwrap_or_default();
        if strategy == Strategy::BlueGreen && slots.len() != 2 {
            self.errs.invalid(&node.name_loc(), "slots", "blue-green needs exactly two slots", None);
        }
        step.action = Action::Deploy(Box::new(Deploy {
            name: name.value,
            strategy,
            version,
            instance: instance?,
            slots,
            health: health?,
            traffic: traffic?,
            verify,
            drain,
            keep_previous,
            probe,
            loc: node.name_loc(),
        }));
        Some(step)
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

    fn slots(&mut self, node: Node) -> Vec<Slot> {
        node.check_props(&[], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
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

    /// `health "plugin" …` or `traffic "plugin" …`, with `allow-*` children.
    /// In `health`, `attempts` and `interval` are the deployment's (it repeats
    /// the plugin's single check); every other property is the plugin's.
    fn role(&mut self, node: Node, health: bool) -> Option<Role> {
        node.check_arg_count(1, &mut self.errs);
        let uses = node.arg_string("a plugin name or path", &mut self.errs)?;
        let mut config: Vec<(String, Template)> = Vec::new();
        let (mut attempts, mut interval) = (30, Duration::from_secs(1));
        for (key, entry) in node.props() {
            match key {
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
                other => self.unknown(child, &format!("a `{}` block", node.name()), GRANT_NODES, other),
            }
        }
        Some(Role { uses, config, grants, attempts, interval })
    }

    fn verify(&mut self, node: Node) -> Option<Verify> {
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

    fn probe(&mut self, node: Node) -> Option<Probe> {
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

    fn port(&mut self, node: Node, e: &kdl::KdlEntry) -> Option<u16> {
        match e.value() {
            KdlValue::Integer(p) if (1..=65535).contains(p) => Some(*p as u16),
            _ => {
                self.errs.invalid(&node.entry_loc(e), "port", "a port is a number from 1 to 65535", None);
                None
            }
        }
    }

    fn missing(&mut self, node: Node, what_node: &str, what: &str, help: &str) {
        self.errs.push(LangError::Missing {
            node: what_node.to_string(),
            what: what.to_string(),
            src: node.src.named(),
            span: node.kdl.span(),
            help: Some(help.to_string()),
        });
    }
}
