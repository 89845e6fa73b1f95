//! Leftovers of dead runs: a `pipe` killed outright cannot clean up after
//! itself, so the next run (and `pipe gc`) removes what it left: containers,
//! Swarm services and networks whose labels name a provably dead process of
//! this machine. Deployment instances are never touched: they are meant to
//! outlive the run that started them.

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListServicesOptions, RemoveContainerOptions,
};

use super::{DockerError, Identity};

/// Removes what dead runs left behind; returns how many objects.
pub async fn collect_garbage(docker: &Docker) -> Result<usize, DockerError> {
    let me = Identity::current();
    let dead = |labels: Option<&HashMap<String, String>>| {
        labels.is_some_and(|l| !l.contains_key("pipe.deploy") && me.provably_dead(l))
    };
    let filters: HashMap<String, Vec<String>> =
        [("label".to_string(), vec!["pipe.run".to_string()])].into_iter().collect();
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .map_err(DockerError::api("list containers"))?;
    let mut removed = 0;
    for c in containers.iter().filter(|c| dead(c.labels.as_ref())) {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        if let Some(id) = &c.id
            && docker.remove_container(id, Some(options)).await.is_ok()
        {
            removed += 1;
        }
    }
    // Swarm jobs: only a manager lists services; elsewhere there are none of ours.
    let services = docker
        .list_services(Some(ListServicesOptions { filters: Some(filters.clone()), ..Default::default() }))
        .await
        .unwrap_or_default();
    for s in services.iter().filter(|s| dead(s.spec.as_ref().and_then(|spec| spec.labels.as_ref()))) {
        if let Some(id) = &s.id
            && docker.delete_service(id).await.is_ok()
        {
            removed += 1;
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions { filters: Some(filters) }))
        .await
        .map_err(DockerError::api("list networks"))?;
    for n in networks.iter().filter(|n| dead(n.labels.as_ref())) {
        if let Some(id) = &n.id
            && docker.remove_network(id).await.is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}
