//! pipe killed after every effect of a deploy of v2 over a live v1, in every
//! strategy, then `resume` or `rollback`, with the instances still running or
//! gone with the machine (a reboot keeps the proxy's configuration, not the
//! processes).

use super::{Kind, Setup, Then};

/// Effects of a whole deploy of v2 over v1.
async fn effects_of_a_deploy(kind: Kind) -> usize {
    let s = Setup::live(kind).await;
    let before = s.effects().len();
    let (result, report) = s.deploy("v2").await.expect("not killed");
    result.expect("v2 deploys");
    assert_eq!(report.outcome, crate::deploy::DeployOutcome::Deployed);
    assert!(report.switch_ms.is_some(), "{kind:?}: the switch is measured without a verify URL too");
    assert_eq!(s.settled(), Ok("v2".to_string()), "{kind:?}: a deploy that nothing disturbs");
    s.effects().len() - before
}

#[tokio::test]
async fn killed_after_any_effect_then_resumed_or_rolled_back_ends_with_traffic_on_a_healthy_release() {
    let mut wrong = Vec::new();
    let mut walked = 0;
    for kind in Kind::ALL {
        let n = effects_of_a_deploy(kind).await;
        for k in 1..=n {
            for then in [Then::Resume, Then::Rollback] {
                for reboot in [false, true] {
                    let s = Setup::live(kind).await;
                    let before = s.effects().len();
                    s.world.with(|w| w.crash_after = Some(before + k));
                    if s.deploy("v2").await.is_some() {
                        wrong.push(format!("{kind:?} effect {k}: the deploy was not killed"));
                        continue;
                    }
                    let killed_after = s.effects()[before + k - 1].clone();
                    if reboot {
                        s.world.with(|w| {
                            w.running.clear();
                            w.checked.clear();
                        });
                    }
                    let case = format!(
                        "{kind:?}, killed after `{killed_after}` (effect {k}/{n}){}, then {then:?}",
                        if reboot { " and rebooted" } else { "" }
                    );
                    walked += 1;
                    let Some((result, _)) = s.then(then, "v2").await else {
                        wrong.push(format!("{case}: killed again"));
                        continue;
                    };
                    let want = match (then, reboot) {
                        (Then::Resume, false) => Some("v2"),
                        (Then::Rollback, _) => Some("v1"),
                        // The new release died with the machine: either is right.
                        (Then::Resume, true) => None,
                    };
                    match s.settled() {
                        Ok(live) if want.is_none_or(|w| w == live) => {}
                        Ok(live) => wrong.push(format!("{case}: {live} is live, not {want:?} ({result:?})")),
                        Err(e) => wrong.push(format!("{case}: {e} ({result:?})")),
                    }
                }
            }
        }
    }
    eprintln!("{walked} paths walked");
    assert!(wrong.is_empty(), "{} of {walked} paths went wrong:\n{}", wrong.len(), wrong.join("\n"));
}
