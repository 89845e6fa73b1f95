use base64::Engine;

use crate::support::Test;

const SECRET: &str = "hunter2-very-secret";

#[test]
fn secret_values_and_their_encodings_are_masked_everywhere() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    secrets { from-env "DEPLOY_TOKEN"; from-file ".secrets.env" }
    stage "s" {
        step "leak" {
            run "echo token=${secrets.DEPLOY_TOKEN}; printf %s \"$T\" | base64; echo db=${secrets.DB_PASSWORD}; echo out=$T >> $PIPE_OUTPUT; test \"$T\" = hunter2-very-secret"
            env { T "${secrets.DEPLOY_TOKEN}" }
        }
    }
}
"#,
        )
        .file(".secrets.env", "# local only\nDB_PASSWORD=\"s3cr3t-db\"\n")
        .env("DEPLOY_TOKEN", SECRET)
        .args(&["run", "--format", "json"])
        .expect(0);
    assert!(out.stdout.contains("token=***") && out.stdout.contains("db=***"), "{}", out.stdout);
    let everything = format!("{}{}{}", out.stdout, out.stderr, dump(&out.dir.join(".pipe")));
    for leaked in [SECRET, b64.as_str(), "s3cr3t-db"] {
        assert!(!everything.contains(leaked), "`{leaked}` leaked");
    }
    assert_eq!(out.step("s.leak")["outputs"]["out"], "***");
}

#[test]
fn each_line_of_a_multi_line_secret_is_masked() {
    let key = "-----BEGIN TEST KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIB\n-----END TEST KEY-----";
    let b64_line = base64::engine::general_purpose::STANDARD.encode("AQEFAASCBKcwggSjAgEAAoIB");
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    secrets { from-env "TLS_KEY" }
    stage "s" {
        step "print" {
            run "printf '%s\n' \"$K\"; printf %s AQEFAASCBKcwggSjAgEAAoIB | base64"
            env { K "${secrets.TLS_KEY}" }
        }
    }
}
"#,
        )
        .env("TLS_KEY", key)
        .args(&["run"])
        .expect(0);
    let everything = format!("{}{}{}", out.stdout, out.stderr, dump(&out.dir.join(".pipe")));
    for leaked in ["MIIEvQIBADANBgkqhkiG9w0B", "AQEFAASCBKcwggSjAgEAAoIB", b64_line.as_str()] {
        assert!(!everything.contains(leaked), "`{leaked}` leaked:\n{everything}");
    }
}

#[test]
fn a_secret_is_needed_only_by_a_step_that_runs_and_reads_it() {
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    secrets { from-env "NOPE_TOKEN" }
    stage "s" {
        step "plain" { run "touch ran" }
        step "skipped" { run "echo ${secrets.NOPE_TOKEN}"; when env="NEVER_SET" }
        step "reads" { run "echo ${secrets.NOPE_TOKEN}"; needs "plain" }
    }
}
"#,
        )
        .args(&["run"])
        .expect(1);
    assert!(out.exists("ran"), "a step that does not read the secret runs");
    assert_eq!(out.status("s.skipped"), "skipped");
    let why = out.step("s.reads")["reason"].as_str().unwrap_or("").to_string();
    assert!(why.contains("`${secrets.NOPE_TOKEN}`: secret `NOPE_TOKEN` is not set in the environment"), "{why}");
}

#[test]
fn a_secrets_file_tracked_by_git_is_refused() {
    let out = Test::new()
        .pipeline(r#"pipeline "p" { secrets { from-file "creds.env" }; stage "s" { step "x" { run "touch ran" } } }"#)
        .file("creds.env", "A=b\n")
        .git("main")
        .args(&["run"])
        .expect(1);
    assert!(out.stderr.contains("is tracked by git"), "{}", out.stderr);
    assert!(!out.exists("ran"));
}

fn dump(dir: &std::path::Path) -> String {
    let mut all = String::new();
    for entry in ignore::WalkBuilder::new(dir).hidden(false).build().flatten() {
        if entry.file_type().is_some_and(|t| t.is_file()) {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    all
}
