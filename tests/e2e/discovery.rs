use crate::support::Test;

const TEMPLATE: &str = r#"
template "service" {
    param "name"
    param "port" default=8080
    env { SERVICE "${param.name}" }
    stage "build" {
        step "compile" { run "echo ${param.name}:${param.port} > ${param.name}.built" }
    }
}
"#;

#[test]
fn finds_pipe_kdl_pipelines_dir_and_nested_services_but_not_ignored_files() {
    let out = Test::new()
        .file("pipe.kdl", r#"pipeline "root" { stage "s" { step "x" { run "true" } } }"#)
        .file("pipelines/release.kdl", r#"pipeline "release" { stage "s" { step "x" { run "true" } } }"#)
        .file("pipelines/templates/t.kdl", "this is not even KDL {")
        .file("services/orders/pipe.kdl", r#"pipeline "orders" { stage "s" { step "x" { run "true" } } }"#)
        .file("build/pipe.kdl", "broken {")
        .file(".gitignore", "build/\n")
        .args(&["list", "--format", "json"])
        .expect(0);
    let names: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["pipeline"].as_str().expect("name").to_string()
        })
        .collect();
    assert_eq!(names, ["root", "release", "orders"]);
}

#[test]
fn several_pipelines_need_a_name() {
    let test = Test::new()
        .file("pipelines/a.kdl", r#"pipeline "a" { stage "s" { step "x" { run "touch a" } } }"#)
        .file("pipelines/b.kdl", r#"pipeline "b" { stage "s" { step "x" { run "touch b" } } }"#);
    let out = test.args(&["run"]).expect(2);
    assert!(out.stderr.contains("2 pipelines here; name the one to run"), "{}", out.stderr);
    assert!(out.stderr.contains("pipelines: a, b"));
}

#[test]
fn a_template_serves_many_services_with_parameters() {
    let out = Test::new()
        .file("templates/service.kdl", TEMPLATE)
        .file(
            "services/orders/pipe.kdl",
            r#"pipeline "orders" { include "../../templates/service.kdl" name="orders" port=8001 }"#,
        )
        .file("services/users/pipe.kdl", r#"pipeline "users" { include "../../templates/service.kdl" name="users" }"#)
        .args(&["run", "users"])
        .expect(0);
    assert_eq!(out.read("services/users/users.built").trim(), "users:8080");
    assert!(!out.exists("services/orders/orders.built"));
}

#[test]
fn template_errors_point_into_the_template() {
    let out = Test::new()
        .file(
            "t.kdl",
            "template \"t\" {\n    param \"name\"\n    stage \"s\" { step \"x\" { run \"echo ${param.nmae}\" } }\n}\n",
        )
        .pipeline(r#"pipeline "p" { include "t.kdl" name="x" colour="red" }"#)
        .args(&["check"])
        .expect(2);
    assert!(out.stderr.contains("unknown property `colour`"), "{}", out.stderr);
    assert!(out.stderr.contains("[t.kdl:3:"), "the caret is in the template: {}", out.stderr);
    assert!(out.stderr.contains("no parameter `nmae` here"));
}

#[test]
fn check_reports_every_file() {
    let out = Test::new()
        .file("pipelines/good.kdl", r#"pipeline "good" { stage "s" { step "x" { run "true" } } }"#)
        .file("pipelines/bad.kdl", r#"pipeline "bad" { stage "s" { step "x" { rnu "true" } } }"#)
        .args(&["check"])
        .expect(2);
    assert!(out.stdout.contains("✓ good (pipelines/good.kdl): 1 stage, 1 step"), "{}", out.stdout);
    assert!(out.stderr.contains("unknown node `rnu` in a step"), "{}", out.stderr);
}

#[test]
fn graph_formats() {
    let pipeline = r#"
pipeline "p" {
    stage "build" { step "compile" { run "true" } }
    stage "test" { needs "build"; step "unit" { run "true" } }
    on-failure { step "page" { run "true" } }
}
"#;
    let text = Test::new().pipeline(pipeline).args(&["graph"]).expect(0);
    insta::assert_snapshot!("graph_text", text.stdout);
    let dot = Test::new().pipeline(pipeline).args(&["graph", "--format", "dot"]).expect(0);
    insta::assert_snapshot!("graph_dot", dot.stdout);
    let mermaid = Test::new().pipeline(pipeline).args(&["graph", "--format", "mermaid"]).expect(0);
    insta::assert_snapshot!("graph_mermaid", mermaid.stdout);
}
