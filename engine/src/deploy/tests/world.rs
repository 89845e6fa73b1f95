//! An in-process world for the deploy driver: slots whose instances run a
//! version or nothing, a health check that answers from that, and a proxy
//! that remembers where it sends traffic. Every effect is counted, so a test
//! can "kill pipe" right after any one of them, and faults are injected the
//! way the real components show them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::deploy::{DeployError, Instance, Role, Status};
use crate::plugin::contract::{Backend, Call, Measurement, Reply};
use crate::step::{ProcessGroup, StepLog};

#[derive(Default)]
pub struct World {
    state: Mutex<State>,
}

#[derive(Default)]
pub struct State {
    /// What each slot runs now.
    pub running: BTreeMap<String, String>,
    /// What the proxy was last told.
    pub routes: Vec<Backend>,
    /// Every effect, in order.
    pub effects: Vec<String>,
    /// "Kill pipe" right after this many effects.
    pub crash_after: Option<usize>,
    /// Set when pipe was "killed".
    pub crashed: CancellationToken,
    /// Versions whose health check fails.
    pub broken: BTreeSet<String>,
    /// A version that exits as soon as it gets traffic.
    pub dies_when_routed: Option<String>,
    /// Route calls (counted from 1) that fail.
    pub failing_routes: BTreeSet<usize>,
    pub routes_called: usize,
    /// The call (start, stop, check or route; counted from 1) that fails
    /// instead of acting: an instance that does not start or stop, a check
    /// that finds it unhealthy, a proxy that refuses.
    pub fail_call: Option<usize>,
    pub calls: usize,
    /// Right after this many effects, every instance of this version dies.
    pub dies_after: Option<(usize, String)>,
    /// What must never happen: more traffic sent to an instance that did
    /// not pass its last health check (since it was started).
    pub violations: Vec<String>,
    /// Each slot's last health check since it was started: passed or not.
    pub checked: BTreeMap<String, bool>,
    /// Slots pipe looked at (status or check) while they were not running.
    pub seen_dead: BTreeSet<String>,
    /// Slots whose stop failed (a fault injected): pipe said so; they may run on.
    pub stop_failed: BTreeSet<String>,
}

/// The slots a test deployment has, and their (fake) ports.
pub const SLOTS: [(&str, u16); 4] = [("blue", 1), ("green", 2), ("c", 3), ("d", 4)];

pub fn slot_of(address: &str) -> String {
    let port: u16 = address.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
    SLOTS.iter().find(|(_, p)| *p == port).map_or_else(String::new, |(n, _)| n.to_string())
}

impl World {
    pub fn new() -> Arc<World> {
        Arc::new(World::default())
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records an effect; if pipe is to be killed right after it, never returns.
    async fn effect(&self, what: String) {
        let crash = self.with(|s| {
            s.effects.push(what);
            if let Some((after, version)) = s.dies_after.clone()
                && after == s.effects.len()
            {
                s.running.retain(|_, v| *v != version);
            }
            if s.crash_after == Some(s.effects.len()) {
                s.crash_after = None;
                s.crashed.cancel();
                true
            } else {
                false
            }
        });
        if crash {
            std::future::pending::<()>().await;
        }
    }

    /// Counts a call; true when it is the one that fails.
    fn fails(&self) -> bool {
        self.with(|s| {
            s.calls += 1;
            s.fail_call == Some(s.calls)
        })
    }

    fn healthy(s: &State, slot: &str) -> bool {
        s.running.get(slot).is_some_and(|v| !s.broken.contains(v))
    }
}

#[derive(Debug)]
pub struct FakeInstance {
    pub world: Arc<World>,
    pub slot: String,
    pub version: String,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("World")
    }
}

#[async_trait::async_trait]
impl Instance for FakeInstance {
    async fn start(&self, _log: &StepLog, _cancel: &CancellationToken) -> Result<Option<ProcessGroup>, DeployError> {
        if self.world.fails() {
            return Err(DeployError::Instance(format!("{} did not start", self.describe())));
        }
        let taken = self.world.with(|s| s.running.contains_key(&self.slot));
        if taken {
            // As a real instance would find its port taken.
            return Err(DeployError::Instance(format!("slot {}: address already in use", self.slot)));
        }
        self.world.with(|s| {
            s.running.insert(self.slot.clone(), self.version.clone());
            s.checked.remove(&self.slot);
        });
        self.world.effect(format!("start {} {}", self.slot, self.version)).await;
        Ok(None)
    }

    async fn stop(&self, _group: Option<&ProcessGroup>, _grace: Duration) -> Result<(), DeployError> {
        if self.world.fails() {
            self.world.with(|s| s.stop_failed.insert(self.slot.clone()));
            return Err(DeployError::Instance(format!("slot {} did not stop", self.slot)));
        }
        if self.world.with(|s| s.running.remove(&self.slot)).is_some() {
            self.world.effect(format!("stop {}", self.slot)).await;
        }
        Ok(())
    }

    async fn status(&self, _group: Option<&ProcessGroup>) -> Status {
        let running = self.world.with(|s| {
            let running = s.running.contains_key(&self.slot);
            if !running {
                s.seen_dead.insert(self.slot.clone());
            }
            running
        });
        match running {
            true => Status::Running,
            false => Status::Dead("its processes have exited".into()),
        }
    }

    async fn last_lines(&self) -> Vec<String> {
        Vec::new()
    }

    fn describe(&self) -> String {
        format!("{} in {}", self.version, self.slot)
    }
}

/// The health, traffic, analysis and notify roles in one.
pub struct FakeRole(pub Arc<World>);

#[async_trait::async_trait]
impl Role for FakeRole {
    fn label(&self) -> String {
        "fake".into()
    }

    async fn call(
        &self,
        call: Call,
        _net: Option<&str>,
        _log: &StepLog,
        _cancel: &CancellationToken,
    ) -> Result<Reply, String> {
        let world = &self.0;
        match call {
            Call::Check { address } => {
                let slot = slot_of(&address);
                let ok = !world.fails()
                    && world.with(|s| {
                        let ok = World::healthy(s, &slot);
                        if !s.running.contains_key(&slot) {
                            s.seen_dead.insert(slot.clone());
                        }
                        s.checked.insert(slot.clone(), ok);
                        ok
                    });
                world.effect(format!("check {slot}: {}", if ok { "healthy" } else { "unhealthy" })).await;
                if ok { Ok(Reply::Done) } else { Err(format!("{address} refused the connection")) }
            }
            Call::Route { backends } => {
                let refused = world.fails();
                let failed = refused
                    || world.with(|s| {
                        s.routes_called += 1;
                        if s.failing_routes.contains(&s.routes_called) {
                            return true;
                        }
                        // Traffic may stay on (or leave) a dead instance; more
                        // of it must never go there.
                        let share = |routes: &[Backend], address: &str| {
                            let total: u32 = routes.iter().map(|b| b.weight).sum();
                            let w = routes.iter().find(|b| b.address == address).map_or(0, |b| b.weight);
                            f64::from(w) / f64::from(total.max(1))
                        };
                        for b in backends.iter().filter(|b| b.weight > 0) {
                            let slot = slot_of(&b.address);
                            let passed = s.checked.get(&slot) == Some(&true);
                            if !passed && share(&backends, &b.address) > share(&s.routes, &b.address) {
                                s.violations
                                    .push(format!("more traffic sent to slot {slot}, which did not just pass a check"));
                            }
                        }
                        s.routes = backends.clone();
                        if let Some(v) = s.dies_when_routed.clone() {
                            let doomed: Vec<String> = backends
                                .iter()
                                .filter(|b| b.weight > 0)
                                .map(|b| slot_of(&b.address))
                                .filter(|slot| s.running.get(slot) == Some(&v))
                                .collect();
                            doomed.iter().for_each(|slot| {
                                s.running.remove(slot);
                            });
                        }
                        false
                    });
                if failed {
                    return Err("the proxy refused the configuration".into());
                }
                let to: Vec<String> =
                    backends.iter().map(|b| format!("{}={}", slot_of(&b.address), b.weight)).collect();
                world.effect(format!("route {}", to.join(" "))).await;
                Ok(Reply::Done)
            }
            Call::Measure(_) => Ok(Reply::Measured(Measurement::default())),
            Call::Notify(_) | Call::Run => Ok(Reply::Done),
        }
    }
}
