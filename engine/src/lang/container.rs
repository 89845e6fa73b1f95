//! `container image="…" pull="…" { user "…"; memory "1GiB"; cpus 1.5; network "bridge" }`.

use kdl::KdlValue;

use super::model::{Action, ContainerSpec, Env, Executor, ImageBuild, PullPolicy, Service, Swarm};
use super::parser::Parser;
use super::reader::Node;

const CONTAINER_NODES: &[&str] = &["user", "memory", "cpus", "network"];

impl Parser {
    /// One `container` per pipeline, stage or step.
    pub(super) fn container_once(&mut self, node: Node, slot: &mut Option<ContainerSpec>) {
        if slot.is_some() {
            self.errs.syntax(&node.name_loc(), "one `container` here", "second container");
        }
        *slot = self.container(node);
    }

    pub(super) fn pull_policy(&mut self, node: Node) -> PullPolicy {
        match node.prop_string("pull", &mut self.errs) {
            None => PullPolicy::IfMissing,
            Some(p) => match p.value.as_str() {
                "never" => PullPolicy::Never,
                "if-missing" => PullPolicy::IfMissing,
                "always" => PullPolicy::Always,
                _ => {
                    let help = Some("pull=\"never\", \"if-missing\" (the default) or \"always\"".to_string());
                    self.errs.invalid(&p.loc, "pull policy", format!("`{}` is not a pull policy", p.value), help);
                    PullPolicy::IfMissing
                }
            },
        }
    }

    fn container(&mut self, node: Node) -> Option<ContainerSpec> {
        node.check_props(&["image", "pull"], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        let pull = self.pull_policy(node);
        let image = match node.prop_string("image", &mut self.errs) {
            Some(i) => self.template(&i),
            None => {
                self.errs.push(super::error::LangError::Missing {
                    node: "container".into(),
                    what: "an image".into(),
                    src: node.src.named(),
                    span: node.kdl.span(),
                    help: Some("container image=\"rust:1.95\"".into()),
                });
                return None;
            }
        };
        let mut spec =
            ContainerSpec { image, pull, user: None, memory: None, cpus: None, network: None, loc: node.loc() };
        for child in node.children() {
            self.leaf(child, &[], 1);
            match child.name() {
                "user" => spec.user = child.arg_string("a user", &mut self.errs).map(|s| s.value),
                "network" => spec.network = child.arg_string("a network", &mut self.errs).map(|s| s.value),
                "memory" => {
                    let text = child.arg_string("a size", &mut self.errs)?;
                    spec.memory = super::parse_size(&text.value);
                    if spec.memory.is_none() {
                        self.errs.invalid(&text.loc, "memory", format!("`{}` is not a size", text.value), None);
                    }
                }
                "cpus" => {
                    let Some(e) = child.args().next() else {
                        child.arg_string("a number of CPUs", &mut self.errs);
                        continue;
                    };
                    match e.value() {
                        KdlValue::Integer(i) if *i > 0 => spec.cpus = Some(*i as f64),
                        KdlValue::Float(f) if *f > 0.0 => spec.cpus = Some(*f),
                        _ => self.errs.invalid(&child.entry_loc(e), "cpus", "a positive number", None),
                    }
                }
                other => self.unknown(child, "a `container` block", CONTAINER_NODES, other),
            }
        }
        Some(spec)
    }
}

impl Parser {
    pub(super) fn image_build(&mut self, node: Node) -> Option<Action> {
        node.check_props(&["context", "tag", "dockerfile", "target"], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        let context = node.prop_string("context", &mut self.errs).map(|c| self.template(&c));
        let context = context.unwrap_or_else(|| super::interp::Template::literal(".", node.loc()));
        let mut build = ImageBuild {
            context,
            dockerfile: node.prop_string("dockerfile", &mut self.errs).map(|d| d.value),
            target: node.prop_string("target", &mut self.errs).map(|t| t.value),
            tags: node.prop_string("tag", &mut self.errs).map(|t| self.template(&t)).into_iter().collect(),
            args: Vec::new(),
            labels: Vec::new(),
        };
        for child in node.children() {
            self.leaf(child, &[], 2);
            let values = child.arg_texts(child.name(), &mut self.errs);
            match (child.name(), values.as_slice()) {
                ("tag", [tag]) => build.tags.push(self.template(tag)),
                ("arg" | "label", [key, value]) => {
                    let pair = (key.value.clone(), self.template(value));
                    if child.name() == "arg" { build.args.push(pair) } else { build.labels.push(pair) }
                }
                ("tag" | "arg" | "label", _) => {
                    let shape = if child.name() == "tag" { "tag \"name:version\"" } else { "NAME \"value\"" };
                    self.errs.invalid(&child.loc(), child.name(), format!("write it as {shape}"), None);
                }
                (other, _) => self.unknown(child, "an `image-build` block", &["arg", "label", "tag"], other),
            }
        }
        if build.tags.is_empty() {
            self.errs.push(super::error::LangError::Missing {
                node: "image-build".into(),
                what: "a tag".into(),
                src: node.src.named(),
                span: node.kdl.span(),
                help: Some("image-build context=\".\" tag=\"app:${git.sha}\"".into()),
            });
        }
        Some(Action::ImageBuild(build))
    }
}

impl Parser {
    pub(super) fn service(&mut self, node: Node) -> Option<Service> {
        node.check_props(&["image", "pull"], &mut self.errs);
        node.check_arg_count(1, &mut self.errs);
        let name = node.arg_string("a service name", &mut self.errs)?;
        let pull = self.pull_policy(node);
        let Some(image) = node.prop_string("image", &mut self.errs).map(|i| self.template(&i)) else {
            self.errs.push(super::error::LangError::Missing {
                node: format!("service \"{}\"", name.value),
                what: "an image".into(),
                src: node.src.named(),
                span: node.kdl.span(),
                help: Some("service \"db\" image=\"postgres:16\"".into()),
            });
            return None;
        };
        let mut service = Service {
            name: name.value,
            image,
            pull,
            env: Env::default(),
            cmd: None,
            health_cmd: None,
            health_timeout: std::time::Duration::from_secs(60),
            port: None,
            loc: name.loc,
        };
        for child in node.children() {
            match child.name() {
                "env" => self.env_block(child, &mut service.env),
                "cmd" => {
                    self.leaf(child, &[], 1);
                    service.cmd = child.arg_string("a command", &mut self.errs).map(|c| c.value);
                }
                "health-cmd" => {
                    self.leaf(child, &["timeout"], 1);
                    service.health_cmd = child.arg_string("a command", &mut self.errs).map(|c| c.value);
                    let timeout =
                        child.prop("timeout").and_then(|e| child.entry_duration(e, "timeout", &mut self.errs));
                    if let Some(t) = timeout {
                        service.health_timeout = t.value;
                    }
                }
                "port" => {
                    self.leaf(child, &[], 1);
                    let port = child.args().next().and_then(|e| child.entry_u32(e, "port", &mut self.errs));
                    service.port = port.and_then(|p| u16::try_from(p.value).ok());
                }
                other => self.unknown(child, "a `service` block", &["env", "cmd", "health-cmd", "port"], other),
            }
        }
        Some(service)
    }
}

impl Parser {
    pub(super) fn executor(&mut self, node: Node) -> Option<Executor> {
        node.check_props(&[], &mut self.errs);
        node.check_arg_count(1, &mut self.errs);
        let name = node.arg_string("an executor", &mut self.errs)?;
        let mut swarm = Swarm::default();
        for child in node.children() {
            match (child.name(), name.value.as_str()) {
                ("constraint", "swarm") => {
                    self.leaf(child, &[], 1);
                    swarm
                        .constraints
                        .extend(child.arg_string("a placement constraint", &mut self.errs).map(|c| c.value));
                }
                ("registry", "swarm") => {
                    self.leaf(child, &[], 1);
                    let registry = child.arg_string("a registry (`host:port`)", &mut self.errs);
                    if let Some(r) = &registry
                        && (r.value.is_empty() || r.value.contains(['/', ' ', '@']))
                    {
                        let help =
                            Some("the registry's `host:port`, as in `registry \"registry.ci:5000\"`".to_string());
                        self.errs.invalid(&r.loc, "registry", format!("`{}` is not a registry host", r.value), help);
                    }
                    swarm.registry = registry.map(|r| r.value);
                }
                (other, _) => self.unknown(child, "a swarm `executor` block", &["constraint", "registry"], other),
            }
        }
        match name.value.as_str() {
            "docker" => Some(Executor::Docker),
            "swarm" => Some(Executor::Swarm(swarm)),
            other => {
                let help = Some("executor \"docker\" (the default) or executor \"swarm\"".to_string());
                self.errs.invalid(&name.loc, "executor", format!("`{other}` is not an executor"), help);
                None
            }
        }
    }
}
