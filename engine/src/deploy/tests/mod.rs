//! The deploy driver's paths, walked through its seam ([`Instance`],
//! [`Role`]) against an in-process world: every strategy, killed after every
//! effect and then resumed or rolled back, and every fault a role or an
//! instance can show. The end-to-end tests prove the real components; these
//! prove every path through the driver.

mod crashes;
mod faults;
mod world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use world::{FakeInstance, FakeRole, SLOTS, World};

use super::journal::Journal;
use super::{
    CanaryRun, DeployError, DeployRun, InstanceRun, JournalStore, PreviousRun, Report, RoleRun, SlotRun, StrategyRun,
    actions,
};
use crate::lang::model::{CanaryStep, Rolling};
use crate::state::StateStore;
use crate::step::StepLog;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    BlueGreen,
    Canary,
    Rolling,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::BlueGreen, Kind::Canary, Kind::Rolling];

    fn strategy(self) -> StrategyRun {
        match self {
            Kind::BlueGreen => StrategyRun::BlueGreen,
            Kind::Canary => {
                let step =
                    |weight| CanaryStep { weight, pause: Duration::ZERO, approve: false, timeout: Duration::ZERO };
                StrategyRun::Canary(Box::new(CanaryRun { steps: vec![step(50), step(100)], analysis: None }))
            }
            Kind::Rolling => StrategyRun::Rolling(Rolling { replicas: 2, batch: 1 }),
        }
    }

    fn slots(self) -> usize {
        match self {
            Kind::BlueGreen | Kind::Canary => 2,
            Kind::Rolling => 3,
        }
    }
}

/// What a test asks of the deployment after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Resume,
    Rollback,
}

/// One deployment of `kind` in a world of its own, with its journal in a
/// temporary checkout.
pub struct Setup {
    pub kind: Kind,
    pub world: Arc<World>,
    dir: tempfile::TempDir,
    runs: std::cell::Cell<u32>,
}

/// How a command ended, or `None` when pipe was "killed" during it.
pub type Ended = Option<(Result<(), DeployError>, Report)>;

impl Setup {
    pub fn new(kind: Kind) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        Setup { kind, world: World::new(), dir, runs: std::cell::Cell::new(0) }
    }

    /// A world where `v1` is live.
    pub async fn live(kind: Kind) -> Setup {
        let s = Setup::new(kind);
        let (result, _) = s.deploy("v1").await.expect("not killed");
        result.expect("v1 deploys");
        s
    }

    /// The deployment of `version` as `run/` renders it, `previous` being
    /// the version live before it (what a rolling rollback starts again).
    fn run(&self, version: &str) -> DeployRun {
        let instance = |slot: &str, version: &str| -> InstanceRun {
            Arc::new(FakeInstance { world: self.world.clone(), slot: slot.into(), version: version.into() })
        };
        let journal = JournalStore::new(StateStore::open(self.dir.path(), "shop"), "web");
        let previous = journal.load().ok().and_then(|j| j.live).filter(|l| l.version != version).map(|l| PreviousRun {
            instances: SLOTS.iter().map(|(slot, _)| (slot.to_string(), instance(slot, &l.version))).collect(),
            version: l.version,
        });
        let role = RoleRun { role: Arc::new(FakeRole(self.world.clone())), attempts: 2, interval: Duration::ZERO };
        self.runs.set(self.runs.get() + 1);
        DeployRun {
            pipeline: "shop".into(),
            name: "web".into(),
            step: "deploy".into(),
            strategy: self.kind.strategy(),
            version: version.into(),
            run_id: format!("run-{}", self.runs.get()),
            git_sha: String::new(),
            inputs: BTreeMap::new(),
            slots: SLOTS[..self.kind.slots()]
                .iter()
                .map(|(name, port)| SlotRun { name: name.to_string(), port: *port, instance: instance(name, version) })
                .collect(),
            health: role.clone(),
            traffic: role.clone(),
            verify: None,
            drain: Duration::ZERO,
            keep_previous: Duration::ZERO,
            approvers: None,
            probe: None,
            notify: vec![super::NotifyRun { role, on: Vec::new() }],
            previous,
            journal,
            root: self.dir.path().to_path_buf(),
            logs: String::new(),
            output_file: None,
        }
    }

    async fn act(&self, version: &str, what: Option<Then>) -> Ended {
        let d = self.run(version);
        let log = StepLog::sink("deploy");
        let cancel = CancellationToken::new();
        let crashed = self.world.with(|s| s.crashed.clone());
        let acting = async {
            match what {
                None => actions::deploy(&d, &log, &cancel).await,
                Some(Then::Resume) => actions::resume(&d, &log, &cancel).await,
                Some(Then::Rollback) => actions::rollback(&d, &log, &cancel).await,
            }
        };
        // A killed pipe does nothing more: its future is dropped where it stood.
        let ended = tokio::select! {
            biased;
            () = crashed.cancelled() => None,
            ended = acting => Some(ended),
        };
        self.world.with(|s| s.crashed = CancellationToken::new());
        ended
    }

    pub async fn deploy(&self, version: &str) -> Ended {
        self.act(version, None).await
    }

    pub async fn then(&self, then: Then, version: &str) -> Ended {
        self.act(version, Some(then)).await
    }

    pub fn journal(&self) -> Journal {
        JournalStore::new(StateStore::open(self.dir.path(), "shop"), "web").load().expect("the journal reads back")
    }

    /// What must hold whenever a command has ended, whatever happened
    /// before: nothing in progress, the proxy sends every request to the
    /// live release's running instances and to nothing else, nothing else
    /// runs, and traffic never went to an instance that was not healthy.
    pub fn settled(&self) -> Result<String, String> {
        let j = self.journal();
        let mut wrong = self.world.with(|s| s.violations.clone());
        if let Some(p) = &j.pending {
            wrong.push(format!("a {:?} is still in progress in phase {}", p.action, p.phase.name()));
        }
        let Some(live) = j.live else { return Err("nothing is live".into()) };
        let (running, serving, seen_dead, stop_failed, injected_death) = self.world.with(|s| {
            (s.running.clone(), s.routes.clone(), s.seen_dead.clone(), s.stop_failed.clone(), s.dies_after.is_some())
        });
        let mut serving: Vec<String> =
            serving.iter().filter(|b| b.weight > 0).map(|b| world::slot_of(&b.address)).collect();
        serving.sort();
        let mut slots = live.slots.clone();
        slots.sort();
        if serving != slots {
            wrong.push(format!("the proxy sends traffic to {serving:?}; the journal says {slots:?} is live"));
        }
        for slot in &slots {
            // An instance that died after pipe's last look is the service's
            // outage, not the deployment's; one pipe saw dead must not be live.
            let died_unseen = injected_death && !running.contains_key(slot) && !seen_dead.contains(slot);
            if running.get(slot) != Some(&live.version) && !died_unseen {
                wrong.push(format!("live slot {slot} runs {:?}, not {}", running.get(slot), live.version));
            }
        }
        for (slot, version) in &running {
            if !slots.contains(slot) && !stop_failed.contains(slot) {
                wrong.push(format!("slot {slot} still runs {version}, outside the live release"));
            }
        }
        if wrong.is_empty() { Ok(live.version) } else { Err(wrong.join("; ")) }
    }

    pub fn effects(&self) -> Vec<String> {
        self.world.with(|s| s.effects.clone())
    }
}
