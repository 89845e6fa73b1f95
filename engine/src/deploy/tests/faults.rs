//! Faults the real components show, in every strategy: a new version that
//! never gets healthy, one that dies as soon as it takes traffic, a proxy
//! that refuses a configuration, an old instance already dead.

use super::{Kind, Setup};

/// Deploys v2 over v1 in a world `fault` has changed; the release that
/// must be live after it.
async fn deploy_with(kind: Kind, fault: &dyn Fn(&Setup)) -> (Setup, Result<(), String>) {
    let s = Setup::live(kind).await;
    fault(&s);
    let (result, _) = s.deploy("v2").await.expect("not killed");
    (s, result.map_err(|e| e.to_string()))
}

#[tokio::test]
async fn every_fault_of_a_role_or_an_instance_leaves_traffic_on_a_healthy_release() {
    type Fault = (&'static str, &'static dyn Fn(&Setup), &'static str, bool);
    let faults: [Fault; 4] = [
        (
            "v2 never gets healthy",
            &|s| {
                s.world.with(|w| w.broken.insert("v2".into()));
            },
            "v1",
            false,
        ),
        (
            "v2 dies as soon as it takes traffic",
            &|s| s.world.with(|w| w.dies_when_routed = Some("v2".into())),
            "v1",
            false,
        ),
        (
            "an old instance is already dead",
            &|s| {
                s.world.with(|w| {
                    let first = w.running.keys().next().cloned();
                    first.map(|slot| w.running.remove(&slot));
                })
            },
            "v2",
            true,
        ),
        (
            "the proxy refuses the first configuration",
            &|s| {
                s.world.with(|w| {
                    let next = w.routes_called + 1;
                    w.failing_routes.insert(next);
                })
            },
            "v1",
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for kind in Kind::ALL {
        for (what, fault, want, succeeds) in &faults {
            let (s, result) = deploy_with(kind, fault).await;
            if result.is_ok() != *succeeds {
                wrong.push(format!("{kind:?}, {what}: the deploy ended {result:?}"));
            }
            match s.settled() {
                Ok(live) if live == *want => {}
                Ok(live) => wrong.push(format!("{kind:?}, {what}: {live} is live, not {want} ({result:?})")),
                Err(e) => wrong.push(format!("{kind:?}, {what}: {e} ({result:?})")),
            }
        }
    }
    assert!(wrong.is_empty(), "{} paths went wrong:\n{}", wrong.len(), wrong.join("\n"));
}
