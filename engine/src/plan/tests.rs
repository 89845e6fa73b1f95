//! The planner on small pipelines: which edges each construct makes.

use std::collections::BTreeSet;

use super::{Edge, Plan, PlanError};
use crate::lang::Source;

fn planned(text: &str) -> Result<Plan, Vec<PlanError>> {
    let src = Source::new("t.kdl", "t.kdl", text);
    let pipelines = crate::lang::parse(&src).unwrap_or_else(|e| panic!("{text} does not parse: {:?}", e.0));
    super::plan(&pipelines[0])
}

fn plan(text: &str) -> Plan {
    planned(text).unwrap_or_else(|e| panic!("{text} does not plan: {e:?}"))
}

/// `a -> b` for a needs edge, `a ~> b` for an ordering-only one.
fn edges(plan: &Plan) -> BTreeSet<String> {
    plan.graph
        .raw_edges()
        .iter()
        .map(|e| {
            let arrow = if e.weight == Edge::Needs { "->" } else { "~>" };
            format!("{} {arrow} {}", plan.graph[e.source()].id, plan.graph[e.target()].id)
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_stage_need_joins_the_ends_of_one_stage_to_the_starts_of_the_next() {
    let p = plan(
        r#"pipeline "p" {
            stage "a" { step "x" { run "1" }; step "y" { run "2"; needs "x" }; step "z" { run "3" } }
            stage "b" { needs "a"; step "u" { run "4" }; step "v" { run "5"; needs "u" } }
        }"#,
    );
    assert_eq!(edges(&p), set(&["a.x -> a.y", "a.y -> b.u", "a.z -> b.u", "b.u -> b.v"]));
}

#[test]
fn a_step_may_need_a_step_of_another_stage_or_a_whole_stage() {
    let p = plan(
        r#"pipeline "p" {
            stage "a" { step "gen" { run "1" }; step "slow" { run "2" } }
            stage "b" { step "early" { run "3"; needs "a.gen" }; step "late" { run "4"; needs "a" } }
        }"#,
    );
    assert_eq!(edges(&p), set(&["a.gen -> b.early", "a.gen -> b.late", "a.slow -> b.late"]));
}

#[test]
fn a_matrix_stage_is_one_instance_per_combination_and_its_dependents_wait_for_all() {
    let p = plan(
        r#"pipeline "p" {
            stage "t" { matrix { os "linux" "macos"; v 1 2 }; step "unit" { run "x" }; step "after" { run "y"; needs "unit" } }
            stage "r" { needs "t"; step "sum" { run "z" } }
        }"#,
    );
    let ids: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(ids, ["t[linux,1]", "t[linux,2]", "t[macos,1]", "t[macos,2]", "r"]);
    let e = edges(&p);
    assert!(e.contains("t[linux,2].unit -> t[linux,2].after"), "a sibling need stays in its instance: {e:?}");
    assert!(!e.contains("t[linux,1].unit -> t[linux,2].after"));
    for inst in ["t[linux,1]", "t[linux,2]", "t[macos,1]", "t[macos,2]"] {
        assert!(e.contains(&format!("{inst}.after -> r.sum")), "{inst}: {e:?}");
    }
    assert_eq!(p.graph.node_weights().find(|s| s.id == "t[macos,1].unit").map(|s| s.matrix.len()), Some(2));
}

#[test]
fn hooks_come_after_what_they_watch_and_dependents_wait_for_them() {
    let p = plan(
        r#"pipeline "p" {
            stage "a" {
                step "x" { run "1" }
                on-failure { step "f" { run "2" } }
                always { step "t" { run "3" } }
            }
            stage "b" { needs "a"; step "y" { run "4" } }
            always { step "end" { run "5" } }
        }"#,
    );
    assert_eq!(
        edges(&p),
        set(&[
            "a.x ~> a.on-failure.f",
            "a.x ~> a.always.t",
            "a.on-failure.f ~> a.always.t",
            "a.x -> b.y",
            "a.always.t ~> b.y",
            "b.y ~> always.end",
        ])
    );
}

#[test]
fn a_condition_on_another_step_orders_after_it_without_needing_its_success() {
    let p = plan(
        r#"pipeline "p" {
            stage "a" { step "x" { run "1" } }
            stage "b" { step "fix" { run "2"; when step="a.x" outcome="failure" } }
        }"#,
    );
    assert_eq!(edges(&p), set(&["a.x ~> b.fix"]));
}

#[test]
fn cycles_are_reported_whole_in_the_users_terms() {
    let errs = planned(
        r#"pipeline "p" {
            stage "a" { needs "c"; step "x" { run "1" } }
            stage "b" { needs "a"; step "y" { run "2" } }
            stage "c" { needs "b"; step "z" { run "3" } }
        }"#,
    )
    .expect_err("a cycle");
    assert_eq!(errs.len(), 1, "one cycle, reported once: {errs:?}");
    let message = errs[0].to_string();
    assert!(
        message.contains("a → c → b → a") || message.contains("c → b → a → c") || message.contains("b → a → c → b"),
        "{message}"
    );
}

#[test]
fn reading_an_output_of_a_step_that_is_not_upstream_is_an_error() {
    let errs = planned(
        r#"pipeline "p" {
            stage "a" { step "v" { run "echo v=1 >> $PIPE_OUTPUT" }; step "use" { run "echo ${steps.a.v.outputs.v}" } }
        }"#,
    )
    .expect_err("not upstream");
    assert!(errs[0].to_string().contains("cannot resolve `${steps.a.v.outputs.v}`"), "{errs:?}");
    let ok = plan(
        r#"pipeline "p" {
            stage "a" { step "v" { run "echo v=1 >> $PIPE_OUTPUT" }; step "use" { run "echo ${steps.a.v.outputs.v}"; needs "v" } }
        }"#,
    );
    assert_eq!(edges(&ok), set(&["a.v -> a.use"]));
}

#[test]
fn selecting_a_stage_keeps_what_it_needs_and_the_hooks_that_watch_them() {
    let p = plan(
        r#"pipeline "p" {
            stage "a" { step "x" { run "1" } }
            stage "b" { needs "a"; step "y" { run "2" }; on-failure { step "f" { run "3" } } }
            stage "c" { needs "b"; step "z" { run "4" } }
            stage "other" { step "o" { run "5" } }
            always { step "end" { run "6" } }
        }"#,
    );
    let kept = p.select_stages(&["b".to_string()]).expect("selects");
    let ids: BTreeSet<&str> = kept.graph.node_weights().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a.x", "always.end", "b.on-failure.f", "b.y"].into_iter().collect());
}
