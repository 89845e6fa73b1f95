use crate::support::Test;

/// Each step records when it started and ended (seconds since the epoch).
fn span(out: &crate::support::Output, name: &str) -> (f64, f64) {
    let text = out.read(name);
    let mut it = text.split_whitespace().map(|t| t.parse::<f64>().expect("time"));
    (it.next().expect("start"), it.next().expect("end"))
}

const TWO_SLEEPS: &str = r#"
pipeline "p" {
    stage "s" {
        step "a" { run "echo $(date +%s.%N) > a.t; sleep 1; echo $(date +%s.%N) >> a.t" }
        step "b" { run "echo $(date +%s.%N) > b.t; sleep 1; echo $(date +%s.%N) >> b.t" }
    }
}
"#;

#[test]
fn steps_without_needs_run_in_parallel() {
    let out = Test::new().pipeline(TWO_SLEEPS).args(&["run", "--jobs", "2"]).expect(0);
    let (a, b) = (span(&out, "a.t"), span(&out, "b.t"));
    assert!(a.0 < b.1 && b.0 < a.1, "the two sleeps overlap: {a:?} {b:?}");
}

#[test]
fn jobs_bounds_parallelism() {
    let out = Test::new().pipeline(TWO_SLEEPS).args(&["run", "--jobs", "1"]).expect(0);
    let (a, b) = (span(&out, "a.t"), span(&out, "b.t"));
    assert!(a.1 <= b.0 || b.1 <= a.0, "one at a time: {a:?} {b:?}");
}

#[test]
fn needs_orders_steps_across_and_within_stages() {
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    stage "build" {
        step "gen" { run "echo gen >> order" }
        step "compile" { run "echo compile >> order"; needs "gen" }
    }
    stage "test" {
        needs "build"
        step "unit" { run "echo unit >> order" }
        step "after-gen" { run "echo x > seen-gen; grep -q gen order"; needs "build.gen" }
    }
}
"#,
        )
        .args(&["run"])
        .expect(0);
    assert_eq!(out.read("order").lines().take(2).collect::<Vec<_>>(), ["gen", "compile"]);
    assert_eq!(out.read("order").lines().last(), Some("unit"));
}

#[test]
fn a_failure_cancels_running_steps_and_kills_their_processes() {
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    stage "s" {
        step "slow" { run "sleep 30 & echo $! > slow.pid; wait" }
        step "bad" { run "while [ ! -s slow.pid ]; do sleep 0.02; done; exit 1" }
    }
    stage "later" { needs "s"; step "never" { run "touch never" } }
    on-failure { step "report" { run "echo failed: ${run.failed-steps} > report" } }
}
"#,
        )
        .args(&["run", "--jobs", "2"])
        .expect(1);
    assert_eq!(out.status("s.bad"), "failed");
    assert_eq!(out.status("s.slow"), "cancelled");
    assert_eq!(out.status("later.never"), "skipped");
    assert!(!out.exists("never"));
    let pid = crate::support::read_pid(&out.dir.join("slow.pid"));
    assert!(!crate::support::alive(pid), "the background sleep {pid} was killed");
    assert!(out.read("report").contains("s.bad"), "report: {}", out.read("report"));
    assert!(out.stdout.contains("s.bad failed: exit code 1"), "{}", out.stdout);
}

#[test]
fn timeouts_fail_the_step_and_kill_the_process_group() {
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    stage "s" {
        step "slow" { run "sleep 30 & echo $! > slow.pid; wait"; timeout "300ms" }
    }
}
"#,
        )
        .args(&["run"])
        .expect(1);
    let step = out.step("s.slow");
    assert_eq!(step["status"], "failed");
    assert!(step["reason"].as_str().unwrap_or("").contains("timed out after 300ms"), "{step}");
    let pid = crate::support::read_pid(&out.dir.join("slow.pid"));
    assert!(!crate::support::alive(pid));
}

#[test]
fn retries_count_attempts_and_give_up() {
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    stage "s" {
        step "flaky" {
            run "n=$(cat n 2>/dev/null || echo 0); echo $((n+1)) > n; test $((n+1)) -ge 2"
            retry 3 backoff="10ms"
        }
    }
    stage "t" {
        needs "s"
        step "hopeless" { run "echo try >> tries; exit 4"; retry 1 backoff="10ms" }
    }
}
"#,
        )
        .args(&["run"])
        .expect(1);
    assert_eq!(out.step("s.flaky")["attempts"], 2);
    assert_eq!(out.status("s.flaky"), "succeeded");
    assert_eq!(out.step("t.hopeless")["attempts"], 2);
    assert_eq!(out.step("t.hopeless")["exit_code"], 4);
    assert_eq!(out.read("tries").lines().count(), 2);
}

#[test]
fn outputs_pass_between_steps_including_multiline_values() {
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    stage "a" {
        step "make" {
            run "echo version=2.0 >> $PIPE_OUTPUT; printf 'body<<END\nfirst\nsecond\nEND\n' >> $PIPE_OUTPUT"
        }
    }
    stage "b" {
        needs "a"
        step "use" {
            run "printf '%s|%s' \"$V\" \"$BODY\" > got"
            env { V "${steps.a.make.outputs.version}"; BODY "${steps.a.make.outputs.body}" }
        }
    }
}
"#,
        )
        .args(&["run"])
        .expect(0);
    assert_eq!(out.read("got"), "2.0|first\nsecond");
    assert_eq!(out.step("a.make")["outputs"]["version"], "2.0");
}

#[test]
fn env_layers_inner_wins_and_workdir_applies() {
    let out = Test::new()
        .file("sub/.keep", "")
        .pipeline(
            r#"
pipeline "p" {
    env { WHO "pipeline"; BOTH "pipeline" }
    stage "s" {
        env { BOTH "stage" }
        step "x" {
            run "echo $WHO $BOTH $ONLY > out; pwd > ../where"
            workdir "sub"
            env { ONLY "step" }
        }
    }
}
"#,
        )
        .args(&["run"])
        .expect(0);
    assert_eq!(out.read("sub/out").trim(), "pipeline stage step");
    assert!(out.read("where").trim().ends_with("/sub"));
}

#[test]
fn when_branch_follows_git() {
    let pipeline = r#"
pipeline "p" {
    stage "deploy" {
        step "prod" { run "touch prod"; when branch="main" }
        step "preview" { run "touch preview"; when branch="feature/*" }
    }
}
"#;
    let out = Test::new().pipeline(pipeline).git("feature/login").args(&["run"]).expect(0);
    assert!(out.exists("preview") && !out.exists("prod"));
    assert_eq!(out.status("deploy.prod"), "skipped");
    assert_eq!(out.record()["git_branch"], "feature/login");
    assert_eq!(out.record()["git_sha"].as_str().map(str::len), Some(40));
}

#[test]
fn stage_selection_runs_what_the_stage_needs() {
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    stage "build" { step "b" { run "touch built" } }
    stage "test" { needs "build"; step "t" { run "touch tested" } }
    stage "deploy" { needs "test"; step "d" { run "touch deployed" } }
    stage "docs" { step "x" { run "touch docs" } }
}
"#,
        )
        .args(&["run", "--stage", "test"])
        .expect(0);
    assert!(out.exists("built") && out.exists("tested"));
    assert!(!out.exists("deployed") && !out.exists("docs"));
}

#[test]
fn json_format_emits_one_event_per_line() {
    let out = Test::new()
        .pipeline(r#"pipeline "p" { stage "s" { step "hello" { run "echo hi" } } }"#)
        .args(&["run", "--format", "json"])
        .expect(0);
    let events: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"run-started"));
    assert_eq!(kinds.last(), Some(&"run-finished"));
    assert!(events.iter().any(|e| e["event"] == "step-log" && e["line"] == "hi" && e["step"] == "s.hello"));
    assert!(events.iter().any(|e| e["event"] == "step-finished" && e["status"] == "succeeded"));
}

/// Every line of `--format json` — a retry, a failure, a skip included — is
/// valid against the published schema (checked by Python's `jsonschema`), has
/// a timestamp, and names its step `step` when it is about one.
#[test]
fn json_events_follow_their_schema_with_timestamps_and_step_names() {
    let out = Test::new()
        .pipeline(
            r#"pipeline "p" { stage "s" {
                step "hello" { run "echo hi" }
                step "flaky" { run "echo try >&2; exit 1"; retry 1 backoff="10ms" }
                step "after" { needs "flaky"; run "true" }
            } }"#,
        )
        .args(&["run", "--format", "json"])
        .expect(1);
    let events: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    for e in &events {
        assert!(e["at"].as_str().is_some_and(|t| t.ends_with('Z')), "no timestamp: {e}");
        if e["event"].as_str().is_some_and(|k| k.starts_with("step-")) {
            assert!(e["step"].is_string(), "a step event without `step`: {e}");
        }
    }
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(kinds.contains(&"step-retrying"), "{kinds:?}");
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/events.schema.json");
    let check = "import json, sys, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 jsonschema.Draft202012Validator.check_schema(schema)\n\
                 v = jsonschema.Draft202012Validator(schema)\n\
                 for n, line in enumerate(sys.stdin, 1):\n\
                 \x20   for e in v.iter_errors(json.loads(line)):\n\
                 \x20       print(f'line {n}: {e.message}'); sys.exit(1)\n";
    let mut python = std::process::Command::new("python3")
        .args(["-c", check])
        .arg(&schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (`bash .ci/setup` installs python3-jsonschema)");
    std::io::Write::write_all(&mut python.stdin.take().expect("stdin"), out.stdout.as_bytes()).expect("write");
    let checked = python.wait_with_output().expect("python3");
    let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success(), "the events do not follow schemas/events.schema.json: {said}");
}

#[test]
fn invalid_pipelines_exit_2_and_start_nothing() {
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    stage "a" { step "ok" { run "touch started" } }
    stage "b" { needs "nope"; step "x" { run "true" } }
}
"#,
        )
        .args(&["run"])
        .expect(2);
    assert!(!out.exists("started"));
    assert!(out.stderr.contains("`nope` does not name a stage"), "{}", out.stderr);
    assert!(!out.exists(".pipe/runs"));
}

#[test]
fn a_missing_command_fails_with_127() {
    let out = Test::new()
        .pipeline(r#"pipeline "p" { stage "s" { step "x" { run "definitely-not-a-command --flag" } } }"#)
        .args(&["run"])
        .expect(1);
    assert_eq!(out.step("s.x")["exit_code"], 127);
    assert!(out.stdout.contains("definitely-not-a-command: command not found"), "{}", out.stdout);
}

/// `--wait` queues behind a running run of the same pipeline and says so
/// (silent, it looked hung); without it the second run is refused.
#[test]
fn a_second_run_waits_with_wait_and_says_so() {
    let test = Test::new().pipeline(
        r#"pipeline "p" { stage "s" { step "hold" { run "if [ ! -e first ]; then touch first; for i in $(seq 1500); do [ -e go ] && break; sleep 0.02; done; fi" } } }"#,
    );
    let quiet = |mut c: std::process::Command| {
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        c
    };
    // Whatever happens below, the first run is let go (no process outlives the test).
    struct Release(std::path::PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let _release = Release(test.path().join("go"));
    let mut first = quiet(test.command()).args(["run"]).spawn().expect("first run");
    crate::support::wait_until("the first run holds the pipeline", || test.path().join("first").exists());
    let refused = test.pipe(&["run"], &[]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("already running"), "{}", refused.stderr);
    let mut second = test
        .command()
        .args(["run", "--wait"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("second run");
    let mut stderr = std::io::BufReader::new(second.stderr.take().expect("stderr"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).expect("read");
    assert!(line.contains("waiting for the running run of `p`"), "{line}");
    std::fs::write(test.path().join("go"), "").expect("go");
    assert!(first.wait().expect("first").success());
    assert!(second.wait().expect("second").success());
}
