//! Service sidecars: started on a network of the run's own before the steps,
//! reachable there by name from container steps, removed after the run. When
//! any step runs on a swarm, the sidecars are swarm services on an attachable
//! overlay network, so that a step on any node (or on the local engine) finds
//! them by the same name.

mod local;
mod swarm;

use bollard::Docker;

use super::RunError;
use super::context::RunContext;
use crate::lang::model::Service;

/// The network a run's services (and its container steps) share: named
/// after the run, as a swarm overlay under DNS label rules.
pub fn network_name(run_id: &str, swarm: bool) -> String {
    let name = format!("pipe-{run_id}");
    if swarm { crate::run::swarm::dns_label(&name) } else { crate::docker::docker_name(&name) }
}

pub enum Services {
    Local(local::Local),
    Swarm(swarm::OnSwarm),
}

impl Services {
    pub async fn start(
        docker: &Docker,
        ctx: &RunContext,
        services: &[Service],
        on_swarm: bool,
    ) -> Result<Services, RunError> {
        Ok(match on_swarm {
            true => Services::Swarm(swarm::OnSwarm::start(docker, ctx, services).await?),
            false => Services::Local(local::Local::start(docker, ctx, services).await?),
        })
    }

    /// The network container steps join.
    pub fn network(&self) -> &str {
        match self {
            Services::Local(l) => &l.network,
            Services::Swarm(s) => &s.network,
        }
    }

    pub async fn stop(self, docker: &Docker) {
        match self {
            Services::Local(l) => l.stop(docker).await,
            Services::Swarm(s) => s.stop(docker).await,
        }
    }
}
