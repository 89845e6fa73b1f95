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

/// How many calls (start, stop, check, route) a whole deploy of v2 over v1 makes.
async fn calls_of_a_deploy(kind: Kind) -> usize {
    let s = Setup::live(kind).await;
    let before = s.world.with(|w| w.calls);
    let (result, _) = s.deploy("v2").await.expect("not killed");
    result.expect("v2 deploys");
    s.world.with(|w| w.calls) - before
}

/// Every call of a deploy failing in turn, and the new version dying after
/// every effect in turn: whatever fails, the deploy ends with nothing in
/// progress, traffic only ever moved to healthy instances, and the live
/// release serving; a v2 that died is never left live.
#[tokio::test]
async fn a_failure_at_every_call_and_a_death_after_every_effect_leave_a_healthy_release_live() {
    let mut wrong = Vec::new();
    let mut walked = 0;
    for kind in Kind::ALL {
        for k in 1..=calls_of_a_deploy(kind).await {
            let s = Setup::live(kind).await;
            s.world.with(|w| w.fail_call = Some(w.calls + k));
            let (result, _) = s.deploy("v2").await.expect("not killed");
            walked += 1;
            if let Err(e) = s.settled() {
                wrong.push(format!("{kind:?}, call {k} fails: {e} ({result:?})"));
            }
        }
        let effects = {
            let s = Setup::live(kind).await;
            let before = s.effects().len();
            s.deploy("v2").await.expect("not killed").0.expect("v2 deploys");
            s.effects().len() - before
        };
        for k in 1..=effects {
            let s = Setup::live(kind).await;
            let before = s.effects().len();
            s.world.with(|w| w.dies_after = Some((before + k, "v2".into())));
            let (result, _) = s.deploy("v2").await.expect("not killed");
            walked += 1;
            let what = s.effects().get(before + k - 1).cloned().unwrap_or_default();
            if let Err(e) = s.settled() {
                wrong.push(format!("{kind:?}, v2 dies after `{what}` (effect {k}/{effects}): {e} ({result:?})"));
            }
        }
    }
    eprintln!("{walked} paths walked");
    assert!(wrong.is_empty(), "{} of {walked} paths went wrong:\n{}", wrong.len(), wrong.join("\n"));
}
