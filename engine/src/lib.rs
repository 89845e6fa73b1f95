//! `pipe`: a declarative pipeline-as-code engine.
//!
//! Data flows one way: text ([`lang`]) -> model -> plan ([`plan`]) -> run ([`run`]),
//! with run records and persistent state in [`state`] and the commands in [`cli`].
//! Below the executors sit what they share: [`step`] (endings, logs, outputs),
//! [`event`] (the run's event stream), [`docker`] (the Engine API) and
//! [`plugin`] (the wasmtime host).

pub mod approval;
pub mod cli;
pub mod deploy;
pub mod docker;
pub mod event;
pub mod identity;
pub mod lang;
pub mod plan;
pub mod plugin;
pub mod report;
pub mod run;
pub mod state;
pub mod step;

/// Parses, checks and plans one pipeline file's text: `pipe check` without the
/// file system. Every error of the file is returned; nothing here may panic,
/// whatever the text (the fuzz target in `engine/fuzz` holds it to that).
pub fn check_source(name: &str, text: &str) -> Result<Vec<plan::Plan>, Vec<Box<dyn miette::Diagnostic + Send + Sync>>> {
    let src = lang::Source::new(name, name, text);
    let pipelines =
        lang::parse(&src).map_err(|errs| errs.0.into_iter().map(|e| Box::new(e) as _).collect::<Vec<_>>())?;
    let mut plans = Vec::new();
    let mut errors: Vec<Box<dyn miette::Diagnostic + Send + Sync>> = Vec::new();
    for p in &pipelines {
        match plan::plan(p) {
            Ok(plan) => plans.push(plan),
            Err(errs) => errors.extend(errs.into_iter().map(|e| Box::new(e) as _)),
        }
    }
    if errors.is_empty() { Ok(plans) } else { Err(errors) }
}
