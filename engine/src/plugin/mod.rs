//! The WebAssembly plugin host: resolving a plugin a pipeline uses, pinning it
//! in `pipe.lock`, reading the interface version it speaks, compiling it
//! (cached on disk), and running it sandboxed with only what the pipeline
//! grants. The rest of pipe sees [`Prepared`] plugins, [`PluginRun`]s and the
//! types of [`contract`], never wasmtime; this module knows nothing of the
//! scheduler (it builds on `step/` for logs and endings).

// A plugin error carries its source snippet for the caret; it is returned at
// most once per plugin and step, so its size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

mod bindings;
mod cache;
pub mod contract;
mod error;
pub mod grants;
mod host;
mod host_api;
mod instance;
mod interface;
pub mod lockfile;
pub mod resolve;
mod sandbox;
mod stderr;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub use cache::Origin;
pub use contract::{Call, PluginInfo, Role};
pub use error::PluginError;
pub use grants::{FieldKind, Granted, Protected};
pub use host::{DEFAULT_MEMORY, Failure, Host, LoadError, Outcome, PluginRun, Prepared, step_exit};
pub use host_api::PluginState;
pub use interface::{Version, served as served_versions};
pub use resolve::{Resolved, builtin_names, resolve};

use crate::lang::Loc;
use crate::lang::error::did_you_mean;
use crate::lang::interp::Template;
use crate::lang::model::{Action, Deploy, Grants, Strategy};
use crate::lang::reader::Spanned;
use crate::plan::Plan;
use lockfile::{Lockfile, Pin};

/// Whether preparing may pin new plugins in `pipe.lock` (a run) or only check (`pipe check`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Pin,
    CheckOnly,
    /// `pipe plugin lock`: pin whatever resolves now.
    Update,
}

/// One place a pipeline uses a plugin, in one role.
pub struct Site<'p> {
    /// What the prepared plugin is found under: a step id, or a deployment's role.
    pub key: String,
    pub uses: &'p Spanned<String>,
    pub config: &'p [(String, Template)],
    pub grants: &'p Grants,
    pub role: Role,
}

/// Every place the plan uses a plugin: plugin steps, and deployments' roles
/// (keyed `<step>#health`, `<step>#traffic`, `<step>#analysis`, `<step>#notify-<n>`).
pub fn sites(plan: &Plan) -> Vec<Site<'_>> {
    let mut out = Vec::new();
    for s in plan.graph.node_weights() {
        match &s.action {
            Action::Plugin(call) => out.push(Site {
                key: s.id.clone(),
                uses: &call.uses,
                config: &call.config,
                grants: &call.grants,
                role: Role::Step,
            }),
            Action::Deploy(d) => {
                for (role, which, spec) in deploy_roles(d) {
                    out.push(Site {
                        key: format!("{}#{which}", s.id),
                        uses: &spec.uses,
                        config: &spec.config,
                        grants: &spec.grants,
                        role,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// A deployment's plugins: each role, what it is keyed under (`health`,
/// `traffic`, `analysis`, `notify-0`…), and how the pipeline wrote it.
pub fn deploy_roles(d: &Deploy) -> Vec<(Role, String, &crate::lang::model::Role)> {
    let mut out =
        vec![(Role::Health, "health".to_string(), &d.health), (Role::Traffic, "traffic".to_string(), &d.traffic)];
    if let Strategy::Canary(c) = &d.strategy
        && let Some(a) = &c.analysis
    {
        out.push((Role::Analysis, "analysis".into(), &a.role));
    }
    out.extend(d.notify.iter().enumerate().map(|(i, n)| (Role::Notify, format!("notify-{i}"), &n.role)));
    out
}

/// Resolves, pins, loads and verifies every plugin a plan uses, keyed by site.
pub async fn prepare(
    plan: &Plan,
    root: &Path,
    mode: LockMode,
) -> Result<HashMap<String, Arc<Prepared>>, Vec<PluginError>> {
    let sites = sites(plan);
    if sites.is_empty() {
        return Ok(HashMap::new());
    }
    let host = Host::global().map_err(|e| vec![e])?;
    let mut lock = Lockfile::load(root)
        .map_err(|e| vec![PluginError::Engine { plugin: "pipe.lock".into(), message: e.to_string() }])?;
    let protected = protected(plan, root);
    let mut lock_changed = false;
    let mut errors = Vec::new();
    let mut by_uses: HashMap<String, Arc<Prepared>> = HashMap::new();
    let mut prepared = HashMap::new();
    for site in sites {
        let uses = site.uses;
        let p = match by_uses.get(&uses.value) {
            Some(p) => p.clone(),
            None => match load(host, uses, &plan.dir, root, mode, &mut lock, &mut lock_changed).await {
                Ok(p) => {
                    by_uses.insert(uses.value.clone(), p.clone());
                    p
                }
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
        };
        errors.extend(verify(&site, &p, &protected));
        prepared.insert(site.key, p);
    }
    if lock_changed && let Err(e) = lock.save(root) {
        errors.push(PluginError::Engine { plugin: "pipe.lock".into(), message: e.to_string() });
    }
    if errors.is_empty() { Ok(prepared) } else { Err(errors) }
}

async fn load(
    host: &Host,
    uses: &Spanned<String>,
    dir: &Path,
    root: &Path,
    mode: LockMode,
    lock: &mut Lockfile,
    lock_changed: &mut bool,
) -> Result<Arc<Prepared>, PluginError> {
    let resolved = resolve(&uses.value, &uses.loc, dir, root)?;
    // Where it came from, relative to the repository when inside it: the
    // same pin in every checkout, wherever it is cloned.
    let origin = Path::new(&resolved.origin)
        .strip_prefix(root)
        .map_or_else(|_| resolved.origin.clone(), |p| p.display().to_string());
    let pin = Pin { sha256: resolved.sha256.clone(), origin };
    // Built-ins ship inside pipe: the binary is what pins them. (Their bytes
    // also differ between checkouts built in different directories.)
    let pinned = if resolved.origin == "built-in" { None } else { lock.plugins.get(&uses.value) };
    match pinned {
        Some(old) if old.sha256 != pin.sha256 && mode != LockMode::Update => {
            return Err(PluginError::DigestMismatch {
                name: uses.value.clone(),
                pinned: old.sha256.clone(),
                found: pin.sha256,
                src: uses.loc.src.named(),
                span: uses.loc.span,
            });
        }
        Some(old) if *old == pin => {}
        None if resolved.origin == "built-in" => {}
        _ if mode != LockMode::CheckOnly => {
            lock.plugins.insert(uses.value.clone(), pin);
            *lock_changed = true;
        }
        _ => {}
    }
    let (component, version, _) = host.load(&resolved).map_err(|e| load_error(&resolved.name, e, Some(&uses.loc)))?;
    let info = host.describe(&resolved.name, &component, version).await?;
    Ok(Arc::new(Prepared { resolved, component, version, info }))
}

/// A load error as a diagnostic, pointing at the step when there is one.
pub fn load_error(plugin: &str, e: LoadError, at: Option<&Loc>) -> PluginError {
    match e {
        LoadError::Incompatible { found } => PluginError::Incompatible {
            plugin: plugin.to_string(),
            found,
            served: served_versions(),
            src: at.map(|l| l.src.named()),
            span: at.map(|l| l.span),
        },
        LoadError::Invalid(reason) => PluginError::Invalid { plugin: plugin.to_string(), reason },
    }
}

/// pipe's own files that no grant of this plan may reach.
pub fn protected(plan: &Plan, root: &Path) -> Protected {
    let secrets: Vec<_> = plan.secrets.files.iter().map(|f| f.value.clone()).collect();
    let mut sources: Vec<_> = plan.graph.node_weights().map(|s| s.loc.src.path.clone()).collect();
    sources.sort();
    sources.dedup();
    Protected::new(root, &secrets, &sources)
}

/// The site's role is one the plugin takes; it grants every capability the
/// plugin asks for (explicitly or through typed settings); it gives every
/// required setting and none the plugin does not know; its literal grants stay
/// clear of pipe's own files.
fn verify(site: &Site, p: &Prepared, protected: &Protected) -> Vec<PluginError> {
    let mut errors = Vec::new();
    let uses = site.uses;
    if !p.info.roles.contains(&site.role) {
        let roles: Vec<&str> = p.info.roles.iter().map(|r| r.node()).collect();
        errors.push(PluginError::WrongRole {
            plugin: p.label(),
            node: site.role.node(),
            roles: roles.join(", "),
            src: uses.loc.src.named(),
            span: uses.loc.span,
        });
    }
    let g = site.grants;
    let typed = |kinds: &[FieldKind]| {
        site.config.iter().any(|(k, _)| p.info.fields.iter().any(|f| f.name == *k && kinds.contains(&f.kind)))
    };
    for cap in &p.info.capabilities {
        let (granted, grant, example) = match cap.as_str() {
            // A health check reaches the instance it checks: the deployment grants that address.
            "net" => (
                !g.net.is_empty() || typed(&[FieldKind::Url]) || site.role == Role::Health,
                "allow-net",
                "allow-net \"127.0.0.1:8080\"",
            ),
            "read" => (
                !g.read.is_empty() || !g.write.is_empty() || typed(&[FieldKind::FileRead, FieldKind::FileWrite]),
                "allow-read",
                "allow-read \"dir\"",
            ),
            "write" => (!g.write.is_empty() || typed(&[FieldKind::FileWrite]), "allow-write", "allow-write \"dir\""),
            "exec" => {
                (!g.exec.is_empty() || typed(&[FieldKind::Command]), "allow-exec", "allow-exec \"program\" \"arg\"")
            }
            "connect" => (
                !g.connect.is_empty() || typed(&[FieldKind::Address]),
                "allow-connect",
                "allow-connect \"127.0.0.1:9999\"",
            ),
            _ => (true, "", ""),
        };
        if !granted {
            errors.push(PluginError::NotGranted {
                step: site.key.clone(),
                plugin: p.label(),
                capability: cap.clone(),
                src: uses.loc.src.named(),
                span: uses.loc.span,
                grant: grant.to_string(),
                help: Some(format!("grant it: {example}")),
            });
        }
    }
    let known: Vec<&str> = p.info.fields.iter().map(|f| f.name.as_str()).collect();
    for (key, value) in site.config {
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
        if !site.config.iter().any(|(k, _)| *k == f.name) {
            errors.push(PluginError::Config {
                plugin: p.label(),
                problem: format!("missing setting `{}`", f.name),
                src: uses.loc.src.named(),
                span: uses.loc.span,
                help: Some(format!("{}: {}", f.name, f.description)),
            });
        }
    }
    // Templated grants are checked once rendered, before the call.
    let dir = uses.loc.src.dir();
    for (list, write) in [(&g.read, false), (&g.write, true)] {
        for grant in list {
            let Some(value) = grant.as_literal() else { continue };
            if let Err(why) = protected.check(&dir.join(&value), write) {
                errors.push(PluginError::GrantTooWide {
                    grant: value,
                    why,
                    src: grant.loc.src.named(),
                    span: grant.loc.span,
                });
            }
        }
    }
    errors
}
