//! KDL document -> [`Pipeline`] model. One pass over the nodes, every mistake
//! collected into [`Errors`], never a panic on anything the user writes.

use std::collections::HashMap;
use std::sync::Arc;

use kdl::{KdlDocument, KdlValue};

use super::error::{Errors, LangError, did_you_mean, expected_one_of};
use super::include_path::Boundary;
use super::interp::{RefKind, Template};
use super::model::{
    Action, Approve, ContainerSpec, Env, Executor, FailFast, Grants, Hooks, Pipeline, Retry, RunCommand, Secrets,
    Service, Stage, Step, Trigger,
};
use super::plugin_step::GRANT_NODES;
use super::reader::{Node, Spanned};
use super::source::{Loc, Source};
use super::template;

const PIPELINE_NODES: &[&str] = &[
    "approvers",
    "env",
    "secrets",
    "container",
    "executor",
    "service",
    "stage",
    "include",
    "changes",
    "on",
    "on-success",
    "on-failure",
    "always",
];
const STAGE_NODES: &[&str] = &[
    "needs",
    "fail-fast",
    "deploy",
    "env",
    "container",
    "executor",
    "service",
    "when",
    "matrix",
    "step",
    "changes",
    "on-success",
    "on-failure",
    "always",
];
const STEP_NODES: &[&str] = &[
    "run",
    "uses",
    "image-build",
    "approve",
    "needs",
    "when",
    "retry",
    "timeout",
    "continue-on-error",
    "env",
    "container",
    "workdir",
    "allow-net",
    "allow-read",
    "allow-write",
    "allow-exec",
    "allow-env",
    "allow-connect",
    "allow-state",
    "cache",
];
const RESERVED_STAGE_NAMES: &[&str] = &["on-success", "on-failure", "always"];

/// Parses one file's text into the pipelines it defines. A template file
/// defines none. Includes read only files inside `boundary`.
pub fn parse_source(src: &Arc<Source>, boundary: Boundary) -> Result<Vec<Pipeline>, Errors> {
    let mut parser = Parser { errs: Errors::default(), depth: 0, boundary };
    let doc = parse_kdl(src)?;
    let mut pipelines = Vec::new();
    let mut names: HashMap<String, Loc> = HashMap::new();
    for node in doc.nodes().iter().map(|n| Node::new(n, src)) {
        match node.name() {
            "pipeline" => {
                if let Some(p) = parser.pipeline(node) {
                    if let Some(first) = names.get(&p.name) {
                        parser.errs.push(duplicate("pipeline", &p.name, &p.loc, Some(first)));
                    }
                    names.insert(p.name.clone(), p.loc.clone());
                    pipelines.push(p);
                }
            }
            "template" => {}
            other => parser.unknown(node, "a pipeline file", &["pipeline", "template"], other),
        }
    }
    if parser.errs.is_empty() { Ok(pipelines) } else { Err(parser.errs) }
}

/// The KDL document of a source, refused before parsing when its blocks nest
/// too deep for the recursive parser.
pub(super) fn parse_kdl(src: &Arc<Source>) -> Result<KdlDocument, Errors> {
    super::nesting::check(src)?;
    KdlDocument::parse(&src.text).map_err(|e| syntax_errors(src, e))
}

/// kdl-rs recovers from one mistake by reporting every block around it as
/// unclosed; those follow-on messages only bury the real one.
const CASCADES: &[&str] =
    &["No closing '}' for child block", "Closing '}' was not found after nodes", "Expected end of document"];

pub(super) fn syntax_errors(src: &Arc<Source>, e: kdl::KdlError) -> Errors {
    let mut errs = Errors::default();
    let is_cascade = |d: &kdl::KdlDiagnostic| d.message.as_deref().is_some_and(|m| CASCADES.contains(&m));
    let mut diags: Vec<kdl::KdlDiagnostic> = e.diagnostics.iter().filter(|d| !is_cascade(d)).cloned().collect();
    if diags.is_empty() {
        // Only follow-on messages: where the parser stopped is the best clue.
        let stop = e.diagnostics.iter().find(|d| d.message.as_deref() == Some(CASCADES[2]));
        match stop {
            Some(d) => diags.push(kdl::KdlDiagnostic {
                message: Some("unexpected text after a node".into()),
                label: Some("parsing stopped here".into()),
                help: Some("nodes on one line are separated by `;`, and every `{` needs its `}`".into()),
                ..d.clone()
            }),
            None => diags.extend(e.diagnostics.into_iter().take(1)),
        }
    }
    for d in diags {
        errs.push(LangError::Syntax {
            message: d.message.unwrap_or_else(|| "invalid KDL".to_string()),
            src: src.named(),
            span: d.span,
            label: d.label.unwrap_or_else(|| "here".to_string()),
            help: d.help,
        });
    }
    if errs.is_empty() {
        errs.syntax(&Loc::new(src, (0, 0).into()), "invalid KDL document", "here");
    }
    errs
}

pub(super) fn duplicate(kind: &'static str, name: &str, at: &Loc, first: Option<&Loc>) -> LangError {
    LangError::Duplicate {
        kind,
        name: name.to_string(),
        src: at.src.named(),
        span: at.span,
        // A first definition in another file (a template) cannot share this caret.
        first: first.filter(|f| Arc::ptr_eq(&f.src, &at.src)).map(|f| f.span),
    }
}

pub(super) struct Parser {
    pub(super) errs: Errors,
    /// Include nesting, bounded so that a template including itself stops.
    pub(super) depth: usize,
    /// Where includes may read from: the repository.
    pub(super) boundary: Boundary,
}

/// What the body of a pipeline (or of an included template) contributes.
#[derive(Default)]
pub(super) struct Body {
    pub env: Env,
    pub container: Option<ContainerSpec>,
    pub executor: Option<Executor>,
    pub services: Vec<Service>,
    pub secrets: Secrets,
    pub stages: Vec<Stage>,
    pub hooks: Hooks,
    pub changes: Option<Vec<Spanned<String>>>,
    pub on_push: Vec<Spanned<String>>,
    /// An include could not be read: its stages are unknown, so "no stages"
    /// would only bury the include's own error.
    pub unread_include: bool,
    pub approvers: Option<super::model::Approvers>,
}

impl Parser {
    fn pipeline(&mut self, node: Node) -> Option<Pipeline> {
        node.check_props(&[], &mut self.errs);
        node.check_arg_count(1, &mut self.errs);
        let name = node.arg_string("a name", &mut self.errs)?;
        let mut body = Body::default();
        self.body(node, &mut body);
        if let Some(approvers) = &body.approvers {
            super::approvers::inherit(approvers, &mut body.stages, &mut body.hooks);
        }
        if body.stages.is_empty() && !body.unread_include {
            self.errs.push(LangError::EmptyPipeline {
                name: name.value.clone(),
                src: node.src.named(),
                span: node.kdl.span(),
            });
        }
        let mut seen: HashMap<&str, &Loc> = HashMap::new();
        for stage in &body.stages {
            if let Some(first) = seen.insert(&stage.name, &stage.loc) {
                self.errs.push(duplicate("stage", &stage.name, &stage.loc, Some(first)));
            }
        }
        Some(Pipeline {
            name: name.value,
            loc: node.name_loc(),
            dir: node.src.dir().to_path_buf(),
            env: body.env,
            secrets: body.secrets,
            container: body.container,
            executor: body.executor,
            services: body.services,
            stages: body.stages,
            hooks: body.hooks,
            changes: body.changes,
            on_push: body.on_push,
            approvers: body.approvers,
        })
    }

    /// The children of a `pipeline` or of an included `template`.
    pub(super) fn body(&mut self, node: Node, body: &mut Body) {
        for child in node.children() {
            match child.name() {
                "approvers" => self.approvers_node(child, &mut body.approvers),
                "env" => self.env_block(child, &mut body.env),
                "secrets" => self.secrets_block(child, &mut body.secrets),
                "container" => self.container_once(child, &mut body.container),
                "service" => body.services.extend(self.service(child)),
                "executor" => body.executor = self.executor(child),
                "stage" => body.stages.extend(self.stage(child)),
                "include" => template::include(self, child, body),
                "changes" => body.changes.get_or_insert_default().extend(self.globs(child)),
                "on" => body.on_push.extend(self.on_push(child)),
                "on-success" | "on-failure" | "always" => self.hook_block(child, &mut body.hooks),
                other => self.unknown(child, "a pipeline", PIPELINE_NODES, other),
            }
        }
    }

    fn stage(&mut self, node: Node) -> Option<Stage> {
        node.check_props(&["needs"], &mut self.errs);
        node.check_arg_count(1, &mut self.errs);
        let name = self.name(node, "stage")?;
        if RESERVED_STAGE_NAMES.contains(&name.value.as_str()) {
            self.errs.invalid(&name.loc, "stage name", format!("`{}` is reserved for hooks", name.value), None);
        }
        let mut stage = Stage {
            name: name.value,
            loc: name.loc,
            needs: Vec::new(),
            env: Env::default(),
            container: None,
            executor: None,
            services: Vec::new(),
            when: Vec::new(),
            matrix: None,
            steps: Vec::new(),
            hooks: Hooks::default(),
            changes: None,
            fail_fast: FailFast::Run,
        };
        if let Some(e) = node.prop("needs") {
            stage.needs.extend(node.entry_string(e, "needs", &mut self.errs));
        }
        for child in node.children() {
            match child.name() {
                "needs" => stage.needs.extend(self.needs(child)),
                "changes" => stage.changes.get_or_insert_default().extend(self.globs(child)),
                "fail-fast" => stage.fail_fast = self.fail_fast(child),
                "env" => self.env_block(child, &mut stage.env),
                "container" => self.container_once(child, &mut stage.container),
                "service" => stage.services.extend(self.service(child)),
                "executor" => stage.executor = self.executor(child),
                "when" => stage.when.extend(self.condition(child)),
                "matrix" => {
                    if stage.matrix.is_some() {
                        self.errs.syntax(&child.name_loc(), "a stage has one `matrix`", "second matrix");
                    }
                    stage.matrix = self.matrix(child);
                }
                "step" => stage.steps.extend(self.step(child)),
                "deploy" => stage.steps.extend(self.deploy(child)),
                "on-success" | "on-failure" | "always" => self.hook_block(child, &mut stage.hooks),
                other => self.unknown(child, "a stage", STAGE_NODES, other),
            }
        }
        if stage.steps.is_empty() {
            self.errs.push(LangError::EmptyStage {
                name: stage.name.clone(),
                src: node.src.named(),
                span: node.kdl.span(),
            });
        }
        self.check_unique_steps(&stage.steps);
        Some(stage)
    }

    /// `fail-fast #true` (the default), `#false`, or `"stage"`.
    fn fail_fast(&mut self, node: Node) -> FailFast {
        self.leaf(node, &[], 1);
        match node.args().next().map(|e| e.value()) {
            None | Some(KdlValue::Bool(true)) => FailFast::Run,
            Some(KdlValue::Bool(false)) => FailFast::Off,
            Some(KdlValue::String(s)) if s == "stage" => FailFast::Stage,
            Some(_) => {
                let help = Some(
                    "#true: a failure stops the run; \"stage\": only its own stage and matrix; #false: nothing".into(),
                );
                self.errs.invalid(&node.name_loc(), "fail-fast", "expected #true, #false or \"stage\"", help);
                FailFast::Run
            }
        }
    }

    pub(super) fn step(&mut self, node: Node) -> Option<Step> {
        node.check_props(&["needs", "memory"], &mut self.errs);
        node.check_arg_count(1, &mut self.errs);
        let name = self.name(node, "step")?;
        let mut step = Step {
            name: name.value,
            loc: name.loc,
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
        if let Some(e) = node.prop("needs") {
            step.needs.extend(node.entry_string(e, "needs", &mut self.errs));
        }
        let mut action = None;
        let mut grants = Grants::default();
        let mut first_grant: Option<Loc> = None;
        for child in node.children() {
            match child.name() {
                "run" | "uses" | "image-build" | "approve" => {
                    if action.is_some() {
                        self.errs.syntax(&child.name_loc(), "a step does one thing", "second action");
                    }
                    action = match child.name() {
                        "run" => self.run(child),
                        "uses" => self.uses(child),
                        "approve" => self.approve(child),
                        _ => self.image_build(child),
                    };
                }
                name if GRANT_NODES.contains(&name) => {
                    first_grant.get_or_insert_with(|| child.name_loc());
                    self.grant(child, &mut grants);
                }
                "needs" => step.needs.extend(self.needs(child)),
                "when" => step.when.extend(self.condition(child)),
                "retry" => step.retry = self.retry(child),
                "timeout" => step.timeout = self.timeout(child),
                "continue-on-error" => {
                    self.leaf(child, &[], 1);
                    step.continue_on_error = match child.args().next() {
                        Some(e) => child.entry_bool(e, "continue-on-error", &mut self.errs).unwrap_or(false),
                        None => true,
                    };
                }
                "env" => self.env_block(child, &mut step.env),
                "cache" => step.cache = self.cache(child),
                "container" => self.container_once(child, &mut step.container),
                "workdir" => {
                    self.leaf(child, &[], 1);
                    step.workdir = child.arg_string("a directory", &mut self.errs).map(|d| self.template(&d));
                }
                other => self.unknown(child, "a step", STEP_NODES, other),
            }
        }
        // A misspelt or malformed action was reported already; "missing" would repeat it.
        let misspelt = node
            .children()
            .iter()
            .any(|c| !STEP_NODES.contains(&c.name()) || ["run", "uses", "image-build", "approve"].contains(&c.name()));
        let memory = self.memory(node);
        match (&mut action, first_grant, memory) {
            (Some(Action::Plugin(call)), _, _) => {
                call.grants = grants;
                call.memory = memory;
            }
            (_, Some(at), _) => {
                self.errs.invalid(&at, "grant", "only plugin steps (`uses`) take `allow-*` grants", None)
            }
            (_, None, Some(_)) => {
                let at = node.prop("memory").map(|e| node.entry_loc(e)).unwrap_or_else(|| node.loc());
                self.errs.invalid(&at, "memory", "only plugin steps (`uses`) take a memory limit", None)
            }
            _ => {}
        }
        if let (Some(_), Some(a)) = (&step.cache, &action)
            && !matches!(a, Action::Run(_) | Action::Plugin(_))
            && let Some(c) = node.children().into_iter().find(|c| c.name() == "cache")
        {
            let help = Some("a step's result can be reused for `run` and `uses` steps".to_string());
            self.errs.invalid(&c.name_loc(), "cache", "this step kind is never cached", help);
        }
        match action {
            Some(a) => step.action = a,
            None if misspelt => {}
            None => self.errs.push(LangError::Missing {
                node: format!("step \"{}\"", step.name),
                what: "an action".to_string(),
                src: node.src.named(),
                span: node.kdl.span(),
                help: Some("give it a command (run \"make test\") or a plugin (uses \"http-check\" url=…)".to_string()),
            }),
        }
        Some(step)
    }

    fn run(&mut self, node: Node) -> Option<Action> {
        self.leaf(node, &["shell"], 1);
        let script = node.arg_string("a command", &mut self.errs)?;
        let shell = node.prop_string("shell", &mut self.errs).and_then(|s| match shell_words::split(&s.value) {
            Ok(words) if !words.is_empty() => Some(words),
            Ok(_) => {
                self.errs.invalid(&s.loc, "shell", "it is empty", None);
                None
            }
            Err(e) => {
                self.errs.invalid(&s.loc, "shell", e.to_string(), None);
                None
            }
        });
        Some(Action::Run(RunCommand { script: self.template(&script), shell }))
    }

    /// `approve "Deploy ${git.sha} to production?" timeout="4h" approvers="release/allowed_signers"`.
    fn approve(&mut self, node: Node) -> Option<Action> {
        self.leaf(node, &["timeout", "approvers"], 1);
        let message = node.arg_string("a question for the approver", &mut self.errs)?;
        let timeout = node.prop("timeout").and_then(|e| node.entry_duration(e, "timeout", &mut self.errs));
        let approvers = node.prop_string("approvers", &mut self.errs).and_then(|p| self.approvers_file(node, &p));
        Some(Action::Approve(Approve {
            message: self.template(&message),
            timeout: timeout.map_or(std::time::Duration::from_secs(24 * 3600), |t| t.value),
            approvers,
        }))
    }

    fn retry(&mut self, node: Node) -> Retry {
        self.leaf(node, &["backoff"], 1);
        let count = match node.args().next() {
            Some(e) => node.entry_u32(e, "retry", &mut self.errs).map(|c| c.value).unwrap_or(0),
            None => {
                node.arg_string("a count", &mut self.errs);
                0
            }
        };
        let backoff = node
            .prop("backoff")
            .and_then(|e| node.entry_duration(e, "backoff", &mut self.errs))
            .map(|d| d.value)
            .unwrap_or_default();
        Retry { count, backoff }
    }

    pub(super) fn timeout(&mut self, node: Node) -> Option<Spanned<std::time::Duration>> {
        self.leaf(node, &[], 1);
        let timeout = node.args().next().and_then(|e| node.entry_duration(e, "timeout", &mut self.errs));
        if timeout.is_none() && node.args().next().is_none() {
            node.arg_string("a duration", &mut self.errs);
        }
        timeout
    }

    pub(super) fn needs(&mut self, node: Node) -> Vec<Spanned<String>> {
        self.leaf(node, &[], usize::MAX);
        let needs = node.arg_texts("needs", &mut self.errs);
        if needs.is_empty() {
            node.arg_string("a stage or step name", &mut self.errs);
        }
        needs
    }

    fn hook_block(&mut self, node: Node, hooks: &mut Hooks) {
        node.check_props(&[], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        let trigger = match node.name() {
            "on-success" => Trigger::OnSuccess,
            "on-failure" => Trigger::OnFailure,
            _ => Trigger::Always,
        };
        let steps = match trigger {
            Trigger::OnSuccess => &mut hooks.on_success,
            Trigger::OnFailure => &mut hooks.on_failure,
            Trigger::Always => &mut hooks.always,
        };
        let before = steps.len();
        for child in node.children() {
            match child.name() {
                "step" => steps.extend(self.step(child)),
                other => self.unknown(child, &format!("an `{}` block", node.name()), &["step"], other),
            }
        }
        for s in &steps[before..] {
            if let Some(need) = s.needs.first() {
                self.errs.invalid(&need.loc, "needs", "hook steps run in the order written", None);
            }
        }
        self.check_unique_steps(steps);
    }

    fn check_unique_steps(&mut self, steps: &[Step]) {
        let mut seen: HashMap<&str, &Loc> = HashMap::new();
        for step in steps {
            if let Some(first) = seen.insert(&step.name, &step.loc) {
                self.errs.push(duplicate("step", &step.name, &step.loc, Some(first)));
            }
        }
    }

    /// A stage or step name: one argument, usable inside `stage.step` references.
    pub(super) fn name(&mut self, node: Node, kind: &str) -> Option<Spanned<String>> {
        let name = node.arg_string(&format!("a {kind} name"), &mut self.errs)?;
        let bad = name.value.is_empty() || name.value.contains(['.', '[', ']', '/', '$']);
        if bad {
            self.errs.invalid(
                &name.loc,
                format!("{kind} name"),
                "names are non-empty and free of `.`, `[`, `]`, `/` and `$`",
                Some("these characters separate `stage.step` references".to_string()),
            );
        }
        Some(name)
    }

    /// A node with arguments only: no block, only the given properties.
    pub(super) fn leaf(&mut self, node: Node, props: &[&str], max_args: usize) {
        node.check_props(props, &mut self.errs);
        node.check_arg_count(max_args, &mut self.errs);
        node.check_no_children(&mut self.errs);
    }

    /// Parses a string into a [`Template`]; `${param.*}` only lives inside templates.
    pub(super) fn template(&mut self, text: &Spanned<String>) -> Template {
        let t = Template::parse(&text.value, &text.loc, &mut self.errs);
        for r in t.refs() {
            if let RefKind::Param(name) = &r.kind {
                self.errs.push(LangError::BadInterpolation {
                    reference: r.text.clone(),
                    reason: format!("no parameter `{name}` here"),
                    src: r.loc.src.named(),
                    span: r.loc.span,
                    help: Some("parameters are declared with `param` in a template and given by `include`".into()),
                });
            }
        }
        t
    }

    pub(super) fn unknown(&mut self, node: Node, context: &str, known: &[&str], name: &str) {
        let help = did_you_mean(name, known.iter().copied()).or_else(|| Some(expected_one_of(known)));
        self.errs.push(LangError::UnknownNode {
            name: name.to_string(),
            context: context.to_string(),
            src: node.src.named(),
            span: node.kdl.name().span(),
            help,
        });
    }
}
