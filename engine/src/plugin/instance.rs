//! An instantiated plugin of any interface version, behind one enum: the host
//! dispatches on the version here and nowhere else.

use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use super::bindings::{v0_1, v0_2};
use super::contract::{Backend, Call, FieldInfo, Input, Measurement, PluginInfo, Reply, Role, Side};
use super::grants::FieldKind;
use super::interface::Version;
use super::sandbox::Sandbox;

pub enum Instance {
    V0_1(v0_1::Step),
    V0_2(v0_2::PipePlugin),
}

type Answer<T> = wasmtime::Result<Result<T, String>>;

impl Instance {
    pub async fn new(
        version: Version,
        store: &mut Store<Sandbox>,
        component: &Component,
        linker: &Linker<Sandbox>,
    ) -> wasmtime::Result<Instance> {
        Ok(match version {
            Version::V0_1 => Instance::V0_1(v0_1::Step::instantiate_async(store, component, linker).await?),
            Version::V0_2 => Instance::V0_2(v0_2::PipePlugin::instantiate_async(store, component, linker).await?),
        })
    }

    pub async fn describe(&self, store: &mut Store<Sandbox>, version: Version) -> wasmtime::Result<PluginInfo> {
        let interface = version.number().to_string();
        Ok(match self {
            Instance::V0_1(p) => {
                use v0_1::exports::pipe::plugin::plugin::Capability as C;
                let d = p.pipe_plugin_plugin().call_describe(store).await?;
                let capability = |c: C| match c {
                    C::Net => "net",
                    C::Read => "read",
                    C::Write => "write",
                    C::Exec => "exec",
                    C::State => "state",
                };
                PluginInfo {
                    name: d.name,
                    version: d.version,
                    summary: d.summary,
                    interface,
                    fields: d
                        .fields
                        .into_iter()
                        .map(|f| FieldInfo {
                            name: f.name,
                            description: f.description,
                            required: f.required,
                            kind: FieldKind::Text,
                        })
                        .collect(),
                    capabilities: d.capabilities.into_iter().map(|c| capability(c).to_string()).collect(),
                    roles: vec![Role::Step],
                }
            }
            Instance::V0_2(p) => {
                use v0_2::pipe::plugin::types::{Capability as C, FieldKind as K, Role as R};
                let d = p.pipe_plugin_plugin().call_describe(store).await?;
                let capability = |c: C| match c {
                    C::Net => "net",
                    C::Read => "read",
                    C::Write => "write",
                    C::Exec => "exec",
                    C::State => "state",
                    C::Connect => "connect",
                };
                let kind = |k: K| match k {
                    K::Text => FieldKind::Text,
                    K::FileRead => FieldKind::FileRead,
                    K::FileWrite => FieldKind::FileWrite,
                    K::Command => FieldKind::Command,
                    K::Url => FieldKind::Url,
                    K::Address => FieldKind::Address,
                };
                let role = |r: R| match r {
                    R::Step => Role::Step,
                    R::Health => Role::Health,
                    R::Traffic => Role::Traffic,
                    R::Analysis => Role::Analysis,
                    R::Notify => Role::Notify,
                };
                let mut roles: Vec<Role> = d.roles.into_iter().map(role).collect();
                if roles.is_empty() {
                    roles.push(Role::Step);
                }
                PluginInfo {
                    name: d.name,
                    version: d.version,
                    summary: d.summary,
                    interface,
                    fields: d
                        .fields
                        .into_iter()
                        .map(|f| FieldInfo {
                            name: f.name,
                            description: f.description,
                            required: f.required,
                            kind: kind(f.kind),
                        })
                        .collect(),
                    capabilities: d.capabilities.into_iter().map(|c| capability(c).to_string()).collect(),
                    roles,
                }
            }
        })
    }

    pub async fn call(&self, store: &mut Store<Sandbox>, input: Input, call: &Call) -> Answer<Reply> {
        match self {
            Instance::V0_1(p) => {
                let input = v0_1::exports::pipe::plugin::plugin::Input {
                    config: input.config,
                    env: input.env,
                    workspace: input.workspace,
                };
                match call {
                    Call::Run => Ok(p.pipe_plugin_plugin().call_run(store, &input).await?.map(|()| Reply::Done)),
                    other => Ok(Err(format!("plugin interface 0.1 has no `{}` role", other.role().node()))),
                }
            }
            Instance::V0_2(p) => {
                use v0_2::pipe::plugin::types as t;
                let input = t::Input { config: input.config, env: input.env, workspace: input.workspace };
                let plugin = p.pipe_plugin_plugin();
                Ok(match call {
                    Call::Run => plugin.call_run(store, &input).await?.map(|()| Reply::Done),
                    Call::Check { address } => plugin.call_check(store, &input, address).await?.map(Reply::Note),
                    Call::Route { backends } => {
                        let backends: Vec<t::Backend> = backends.iter().map(to_wit_backend).collect();
                        plugin.call_route(store, &input, &backends).await?.map(Reply::Note)
                    }
                    Call::Measure(w) => {
                        let window = t::Window {
                            canary: w.canary.clone(),
                            baseline: w.baseline.clone(),
                            start_ms: w.start_ms,
                            end_ms: w.end_ms,
                        };
                        plugin.call_measure(store, &input, &window).await?.map(|m| {
                            Reply::Measured(Measurement {
                                canary: side(m.canary),
                                baseline: side(m.baseline),
                                note: m.note,
                            })
                        })
                    }
                    Call::Notify(e) => {
                        let event = t::Event {
                            pipeline: e.pipeline.clone(),
                            deploy: e.deploy.clone(),
                            version: e.version.clone(),
                            kind: e.kind.clone(),
                            message: e.message.clone(),
                            details: e.details.clone(),
                            logs: e.logs.clone(),
                        };
                        plugin.call_notify(store, &input, &event).await?.map(|()| Reply::Done)
                    }
                })
            }
        }
    }
}

fn to_wit_backend(b: &Backend) -> v0_2::pipe::plugin::types::Backend {
    v0_2::pipe::plugin::types::Backend { address: b.address.clone(), weight: b.weight }
}

fn side(s: v0_2::pipe::plugin::types::Side) -> Side {
    Side { requests: s.requests, errors: s.errors, p50_ms: s.p50_ms, p90_ms: s.p90_ms, p99_ms: s.p99_ms }
}
