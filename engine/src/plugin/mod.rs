//! The WebAssembly plugin host: resolving a step's `uses`, pinning it in
//! `pipe.lock`, checking its interface version, compiling it (cached on disk),
//! and running it sandboxed with only the capabilities the step grants.
//! The rest of pipe sees [`Prepared`] plugins and [`PluginRun`]s, never wasmtime.

// A plugin error carries its source snippet for the caret; it is returned at
// most once per plugin and step, so its size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

mod cache;
mod error;
mod host;
mod interface;
pub mod lockfile;
mod resolve;
mod sandbox;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub use cache::Origin;
pub use error::PluginError;
pub use host::{DEFAULT_MEMORY, Host, PluginInfo, PluginRun, Prepared};
pub use interface::VERSION as INTERFACE_VERSION;
pub use resolve::{Resolved, builtin_names, resolve};
pub use sandbox::Granted;

use crate::lang::error::did_you_mean;
use crate::lang::model::{Action, PluginCall};
use crate::plan::Plan;
use lockfile::{Lockfile, Pin};

#[allow(clippy::unwrap_used)]
pub(crate) mod host_bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "step",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// Whether preparing may pin new plugins in `pipe.lock` (a run) or only check (`pipe check`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Pin,
    CheckOnly,
    /// `pipe plugin lock`: pin whatever resolves now.
    Update,
}

/// Resolves, pins, loads and verifies every plugin a plan uses. Keyed by step id.
pub async fn prepare(
    plan: &Plan,
    root: &Path,
    mode: LockMode,
) -> Result<HashMap<String, Arc<Prepared>>, Vec<PluginError>> {
    let calls: Vec<(&str, &PluginCall)> = plan
        .graph
        .node_weights()
        .filter_map(|s| match &s.action {
            Action::Plugin(call) => Some((s.id.as_str(), call)),
            Action::Run(_) | Action::ImageBuild(_) => None,
        })
        .collect();
    if calls.is_empty() {
        return Ok(HashMap::new());
    }
    let host = Host::global().map_err(|e| vec![e])?;
    let mut lock = Lockfile::load(root)
        .map_err(|e| vec![PluginError::Engine { plugin: "pipe.lock".into(), message: e.to_string() }])?;
    let mut lock_changed = false;
    let mut errors = Vec::new();
    let mut by_uses: HashMap<String, Arc<Prepared>> = HashMap::new();
    let mut prepared = HashMap::new();
    for (id, call) in calls {
        let uses = &call.uses;
        let p = match by_uses.get(&uses.value) {
            Some(p) => p.clone(),
            None => {
                let resolved = match resolve(&uses.value, &uses.loc, &plan.dir, root) {
                    Ok(r) => r,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let pin = Pin { sha256: resolved.sha256.clone(), origin: resolved.origin.clone() };
                match lock.plugins.get(&uses.value) {
                    Some(old) if old.sha256 != pin.sha256 && mode != LockMode::Update => {
                        errors.push(PluginError::DigestMismatch {
                            name: uses.value.clone(),
                            pinned: old.sha256.clone(),
                            found: pin.sha256,
                            src: uses.loc.src.named(),
                            span: uses.loc.span,
                        });
                        continue;
                    }
                    Some(old) if *old == pin => {}
                    _ if mode != LockMode::CheckOnly => {
                        lock.plugins.insert(uses.value.clone(), pin);
                        lock_changed = true;
                    }
                    _ => {}
                }
                let component = match host.load(&resolved) {
                    Ok((c, _)) => c,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let info = match host.describe(&resolved.name, &component).await {
                    Ok(i) => i,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let p = Arc::new(Prepared { resolved, component, info });
                by_uses.insert(uses.value.clone(), p.clone());
                p
            }
        };
        errors.extend(verify(id, call, &p));
        prepared.insert(id.to_string(), p);
    }
    if lock_changed && let Err(e) = lock.save(root) {
        errors.push(PluginError::Engine { plugin: "pipe.lock".into(), message: e.to_string() });
    }
    if errors.is_empty() { Ok(prepared) } else { Err(errors) }
}

/// The step grants every capability the plugin asks for, gives every required
/// field, and no field the plugin does not know.
fn verify(step: &str, call: &PluginCall, p: &Prepared) -> Vec<PluginError> {
    let mut errors = Vec::new();
    let g = &call.grants;
    for cap in &p.info.capabilities {
        let (granted, grant, example) = match cap.as_str() {
            "net" => (!g.net.is_empty(), "allow-net", "allow-net \"127.0.0.1:8080\""),
            "read" => (!g.read.is_empty() || !g.write.is_empty(), "allow-read", "allow-read \"dir\""),
            "write" => (!g.write.is_empty(), "allow-write", "allow-write \"dir\""),
            "exec" => (!g.exec.is_empty(), "allow-exec", "allow-exec \"program\" \"arg\""),
            _ => (true, "", ""),
        };
        if !granted {
            errors.push(PluginError::NotGranted {
                step: step.to_string(),
                plugin: p.label(),
                capability: cap.clone(),
                src: call.uses.loc.src.named(),
                span: call.uses.loc.span,
                grant: grant.to_string(),
                help: Some(format!("grant it in the step: {example}")),
            });
        }
    }
    let known: Vec<&str> = p.info.fields.iter().map(|f| f.name.as_str()).collect();
    for (key, value) in &call.config {
        if !known.is_empty() && !known.contains(&key.as_str()) {
            errors.push(PluginError::Config {
                plugin: p.label(),
                problem: format!("unknown setting `{key}`"),
                src: value.loc.src.named(),
                span: value.loc.span,
                help: did_you_mean(key, known.iter().copied())
                    .or_else(|| Some(format!("settings: {}", known.join(", ")))),
            });
        }
    }
    for f in p.info.fields.iter().filter(|f| f.required) {
        if !call.config.iter().any(|(k, _)| *k == f.name) {
            errors.push(PluginError::Config {
                plugin: p.label(),
                problem: format!("missing setting `{}`", f.name),
                src: call.uses.loc.src.named(),
                span: call.uses.loc.span,
                help: Some(format!("{}: {}", f.name, f.description)),
            });
        }
    }
    errors
}
