//! `${namespace.path}` references inside string values.
//!
//! A reference without a dot (`${HOME}`) is left for the shell; `$${` writes a literal `${`.

use super::error::{Errors, LangError, did_you_mean};
use super::source::Loc;

/// A string with references, parsed once at load time.
#[derive(Clone, Debug)]
pub struct Template {
    pub parts: Vec<Part>,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub enum Part {
    Lit(String),
    Ref(Reference),
}

#[derive(Clone, Debug)]
pub struct Reference {
    pub kind: RefKind,
    /// The reference as written, `${...}` included.
    pub text: String,
    pub loc: Loc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefKind {
    Env(String),
    Secret(String),
    Matrix(String),
    Param(String),
    GitSha,
    GitBranch,
    RunId,
    RunPipeline,
    RunFailedSteps,
    /// `state.<key>`: the pipeline's persistent state when the step starts
    /// (`state.nginx-switch/app.current` reads a plugin's key).
    State(String),
    /// `pipeline.dir`: the pipeline file's directory, absolute.
    PipelineDir,
    /// `slot.name`, `slot.port`, `slot.address`: inside a deployment's instance,
    /// the slot it is started in.
    Slot(SlotField),
    /// `deploy.version`: inside a deployment, the version it deploys.
    DeployVersion,
    /// `steps.<stage>.<step>.outputs.<key>`; the planner resolves `stage` to an instance.
    StepOutput {
        stage: String,
        step: String,
        key: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotField {
    Name,
    Port,
    Address,
}

pub const NAMESPACES: &[&str] =
    &["env", "secrets", "matrix", "param", "git", "run", "steps", "state", "pipeline", "slot", "deploy"];

impl Template {
    pub fn literal(text: &str, loc: Loc) -> Self {
        Template { parts: vec![Part::Lit(text.to_string())], loc }
    }

    pub fn parse(text: &str, loc: &Loc, errs: &mut Errors) -> Self {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            lit.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("$${") {
                lit.push_str("${");
                rest = after;
            } else if let Some(after) = tail.strip_prefix("${") {
                let Some(end) = after.find('}') else {
                    errs.syntax(&loc.narrow(tail), "unclosed `${` in string", "missing `}`");
                    lit.push_str(tail);
                    rest = "";
                    break;
                };
                let inner = &after[..end];
                let whole = &tail[..end + 3];
                if !inner.contains('.') {
                    lit.push_str(whole); // a shell variable, not ours
                } else {
                    let rloc = loc.narrow(whole);
                    match parse_ref(inner) {
                        Ok(kind) => {
                            if !lit.is_empty() {
                                parts.push(Part::Lit(std::mem::take(&mut lit)));
                            }
                            parts.push(Part::Ref(Reference { kind, text: whole.to_string(), loc: rloc }));
                        }
                        Err((reason, help)) => {
                            errs.push(LangError::BadInterpolation {
                                reference: whole.to_string(),
                                reason,
                                src: rloc.src.named(),
                                span: rloc.span,
                                help,
                            });
                            lit.push_str(whole);
                        }
                    }
                }
                rest = &after[end + 1..];
            } else {
                lit.push('$');
                rest = &tail[1..];
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() || parts.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Template { parts, loc: loc.clone() }
    }

    /// The text, when it holds no reference.
    pub fn as_literal(&self) -> Option<String> {
        self.render(|_| Err(())).ok()
    }

    pub fn refs(&self) -> impl Iterator<Item = &Reference> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Lit(_) => None,
        })
    }

    pub fn refs_mut(&mut self) -> impl Iterator<Item = &mut Reference> {
        self.parts.iter_mut().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Lit(_) => None,
        })
    }

    /// Renders with `resolve` answering every reference.
    pub fn render<E>(&self, mut resolve: impl FnMut(&Reference) -> Result<String, E>) -> Result<String, E> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Ref(r) => out.push_str(&resolve(r)?),
            }
        }
        Ok(out)
    }
}

type RefError = (String, Option<String>);

fn parse_ref(inner: &str) -> Result<RefKind, RefError> {
    let (ns, path) = inner.split_once('.').unwrap_or((inner, ""));
    let need_name = |what: &str| -> Result<String, RefError> {
        if path.is_empty() {
            Err((format!("`{ns}` needs a {what}"), Some(format!("write ${{{ns}.NAME}}"))))
        } else {
            Ok(path.to_string())
        }
    };
    match ns {
        "env" => need_name("variable name").map(RefKind::Env),
        "secrets" => need_name("secret name").map(RefKind::Secret),
        "matrix" => need_name("matrix axis").map(RefKind::Matrix),
        "param" => need_name("parameter name").map(RefKind::Param),
        "git" => match path {
            "sha" => Ok(RefKind::GitSha),
            "branch" => Ok(RefKind::GitBranch),
            _ => Err(unknown_field("git", path, &["sha", "branch"])),
        },
        "run" => match path {
            "id" => Ok(RefKind::RunId),
            "pipeline" => Ok(RefKind::RunPipeline),
            "failed-steps" => Ok(RefKind::RunFailedSteps),
            _ => Err(unknown_field("run", path, &["id", "pipeline", "failed-steps"])),
        },
        "steps" => parse_step_output(path),
        "state" => need_name("state key").map(RefKind::State),
        "pipeline" => match path {
            "dir" => Ok(RefKind::PipelineDir),
            _ => Err(unknown_field("pipeline", path, &["dir"])),
        },
        "slot" => match path {
            "name" => Ok(RefKind::Slot(SlotField::Name)),
            "port" => Ok(RefKind::Slot(SlotField::Port)),
            "address" => Ok(RefKind::Slot(SlotField::Address)),
            _ => Err(unknown_field("slot", path, &["name", "port", "address"])),
        },
        "deploy" => match path {
            "version" => Ok(RefKind::DeployVersion),
            _ => Err(unknown_field("deploy", path, &["version"])),
        },
        _ => Err((
            format!("unknown namespace `{ns}`"),
            did_you_mean(ns, NAMESPACES.iter().copied()).or_else(|| Some(super::error::expected_one_of(NAMESPACES))),
        )),
    }
}

fn unknown_field(ns: &str, field: &str, known: &[&str]) -> RefError {
    (
        format!("`{ns}` has no field `{field}`"),
        did_you_mean(field, known.iter().copied()).or_else(|| Some(super::error::expected_one_of(known))),
    )
}

fn parse_step_output(path: &str) -> Result<RefKind, RefError> {
    let shape = || {
        (
            "a step output is written `steps.<stage>.<step>.outputs.<key>`".to_string(),
            Some("a matrix instance is named with its values: steps.test[linux,1].unit.outputs.key".to_string()),
        )
    };
    // The stage may be a matrix instance such as `test[linux,1.2]`: split outside brackets.
    let mut fields = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in path.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 && fields.len() < 3 => {
                fields.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&path[start..]);
    match fields.as_slice() {
        [stage, step, "outputs", key] if !stage.is_empty() && !step.is_empty() && !key.is_empty() => {
            Ok(RefKind::StepOutput { stage: stage.to_string(), step: step.to_string(), key: key.to_string() })
        }
        _ => Err(shape()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::source::Source;

    fn parse(text: &str) -> (Template, Errors) {
        let src = Source::new("t.kdl", "t.kdl", text);
        let loc = Loc::new(&src, (0, text.len()).into());
        let mut errs = Errors::default();
        (Template::parse(text, &loc, &mut errs), errs)
    }

    #[test]
    fn shell_variables_and_escapes_pass_through() {
        let (t, errs) = parse("echo ${HOME} $$${x} $${env.A} $5");
        assert!(errs.is_empty());
        let out: Result<String, ()> = t.render(|_| Ok("X".into()));
        assert_eq!(out, Ok("echo ${HOME} $${x} ${env.A} $5".to_string()));
    }

    #[test]
    fn references_are_parsed() {
        let (t, errs) = parse(
            "${env.A}-${steps.test[linux,1.2].unit.outputs.v}-${run.failed-steps}-${state.nginx-switch/app.current}-${pipeline.dir}-${slot.port}",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let kinds: Vec<_> = t.refs().map(|r| r.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                RefKind::Env("A".into()),
                RefKind::StepOutput { stage: "test[linux,1.2]".into(), step: "unit".into(), key: "v".into() },
                RefKind::RunFailedSteps,
                RefKind::State("nginx-switch/app.current".into()),
                RefKind::PipelineDir,
                RefKind::Slot(SlotField::Port),
            ]
        );
    }

    #[test]
    fn bad_references_are_reported() {
        for bad in ["${envv.A}", "${git.shaa}", "${steps.a.b.c}", "${env.A"] {
            let (_, errs) = parse(bad);
            assert_eq!(errs.0.len(), 1, "{bad}");
        }
    }
}
