//! `container image="…" pull="…" { user "…"; memory "1GiB"; cpus 1.5; network "bridge" }`.

use kdl::KdlValue;

use super::model::{Action, ContainerSpec, ImageBuild, PullPolicy};
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

    fn container(&mut self, node: Node) -> Option<ContainerSpec> {
        node.check_props(&["image", "pull"], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        let pull = match node.prop_string("pull", &mut self.errs) {
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
        };
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
