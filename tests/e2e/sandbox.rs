//! The sandbox's edges, tried as an attacker would: what a plugin's commands
//! inherit and leave behind, its state, its log, its failure reasons, the
//! files of pipe's own, and whether a busy plugin can stall anything else.

use std::io::{BufRead, Write};

use crate::support::{Test, alive, read_pid, test_plugin};

/// A repository with the hostile plugin installed as `hostile` (its state
/// namespace is then `hostile`).
fn with_hostile() -> Test {
    let test = Test::new().file(".pipe/plugins/hostile.wasm", "");
    std::fs::copy(test_plugin("hostile"), test.path().join(".pipe/plugins/hostile.wasm")).expect("install");
    test
}

fn reason(out: &crate::support::Output, id: &str) -> String {
    let s = out.step(id);
    format!("{} | {}", s["reason"].as_str().unwrap_or(""), s["tail"])
}

#[test]
fn commands_a_plugin_runs_get_only_granted_env_and_end_with_it() {
    let out = with_hostile()
        .pipeline(
            r#"
pipeline "p" {
    stage "s" {
        step "env" {
            uses "hostile" mode="sh" target="env | sort; sleep 300 & echo $! > bg.pid"
            allow-exec "sh" "-c" "*"
            allow-env "GIVEN"
        }
        step "flood" {
            uses "hostile" mode="sh" target="yes | head -c 5000000"
            allow-exec "sh" "-c" "*"
        }
        step "stuck" {
            uses "hostile" mode="sh" target="sleep 300 & echo $! > stuck.pid; wait"
            allow-exec "sh" "-c" "*"
            timeout "1s"
            continue-on-error
        }
    }
}
"#,
        )
        .env("GIVEN", "yes-given")
        .env("SECRET_TOKEN", "must-not-leak")
        .args(&["run", "--jobs", "1"])
        .expect(0);
    assert!(out.stdout.contains("GIVEN=yes-given"), "{}", out.stdout);
    assert!(!out.stdout.contains("SECRET_TOKEN") && !out.stdout.contains("must-not-leak"), "{}", out.stdout);
    assert!(out.stdout.contains("PATH=/usr/local/sbin"), "a minimal PATH: {}", out.stdout);
    let bg = read_pid(&out.dir.join("bg.pid"));
    assert!(!alive(bg), "the background process {bg} ended with the command");
    assert!(out.stdout.contains("stopped 1 process(es) the step left running"), "{}", out.stdout);
    // Output is read as it comes and kept up to a bound, not buffered whole.
    assert_eq!(out.step("s.flood")["outputs"]["stdout-bytes"], (1 << 20).to_string());
    assert_eq!(out.step("s.flood")["outputs"]["truncated"], "true");
    assert!(reason(&out, "s.stuck").contains("timed out after 1s"), "{}", reason(&out, "s.stuck"));
    let stuck = read_pid(&out.dir.join("stuck.pid"));
    assert!(!alive(stuck), "the step's timeout killed {stuck}");
}

#[test]
fn plugin_state_is_namespaced_bounded_and_never_holds_secrets() {
    let test = with_hostile();
    let dir = test.path().to_path_buf();
    let step = |name: &str, config: &str, extra: &str| {
        format!("        step \"{name}\" {{ uses \"hostile\" {config}; continue-on-error; {extra} }}\n")
    };
    let mut steps = String::new();
    steps += &step("own", r#"mode="state-set" target="color" value="blue""#, "");
    steps += &step("other", r#"mode="state-set" target="nginx-switch/app.current" value="evil:1""#, "");
    steps += &step("granted", r#"mode="state-set" target="shared/ok" value="yes""#, r#"allow-state "shared""#);
    steps += &step("big", r#"mode="state-big" target="huge""#, "");
    steps += &step("many", r#"mode="state-set" target="k" value="v" count=300"#, "");
    steps += &step("secret", r#"mode="state-set" target="tok" value="${secrets.TOKEN}""#, "");
    let out = test
        .pipeline(&format!(
            "pipeline \"p\" {{\n    secrets {{ from-env \"TOKEN\" }}\n    stage \"s\" {{\n{steps}    }}\n}}\n"
        ))
        .env("TOKEN", "s3cret-token-value")
        .args(&["run", "--jobs", "1"])
        .expect(0);
    assert_eq!(out.status("s.own"), "succeeded");
    assert!(
        reason(&out, "s.other").contains("grant it with `allow-state \\\"nginx-switch\\\"`"),
        "{}",
        reason(&out, "s.other")
    );
    assert_eq!(out.status("s.granted"), "succeeded");
    assert!(reason(&out, "s.big").contains("at most 64 KiB"), "{}", reason(&out, "s.big"));
    assert!(reason(&out, "s.many").contains("holds 256 keys"), "{}", reason(&out, "s.many"));
    assert!(reason(&out, "s.secret").contains("holds a secret"), "{}", reason(&out, "s.secret"));
    let state = std::fs::read_to_string(dir.join(".pipe/state/p.json")).expect("state");
    assert!(state.contains("\"hostile/color\": \"blue\"") && state.contains("\"shared/ok\""), "{state}");
    assert!(!state.contains("nginx-switch") && !state.contains("s3cret"), "{state}");
    assert!(state.len() < 64 << 10, "the state file stays small: {} bytes", state.len());
}

#[test]
fn plugin_log_lines_cannot_forge_pipes_own_output() {
    let out = with_hostile()
        .pipeline(r#"pipeline "p" { stage "s" { step "inject" { uses "hostile" mode="inject" } } }"#)
        .args(&["run"])
        .expect(0);
    assert!(!out.stdout.contains('\u{1b}'), "no terminal escapes reach the console");
    for line in out.stdout.lines().filter(|l| l.contains("deploy.ship") || l.contains("forged")) {
        assert!(line.trim_start().starts_with("s.inject │"), "every plugin line carries its step: {line:?}");
    }
    assert!(out.stdout.contains("s.inject │ from stderr"), "{}", out.stdout);
    let log = out.read(&format!(".pipe/runs/{}/logs/s.inject.log", out.record()["id"].as_str().expect("id")));
    assert!(log.contains("red") && !log.contains('\u{1b}'), "{log}");
    assert!(log.lines().all(|l| l.len() < 70_000), "long lines are cut");
}

#[test]
fn a_plugins_stderr_is_in_its_log_even_when_it_times_out() {
    let out = with_hostile()
        .pipeline(
            r#"pipeline "p" { stage "s" { step "slow" { uses "hostile" mode="stderr-then-loop"; timeout "1s" } } }"#,
        )
        .args(&["run"])
        .expect(1);
    assert!(out.stdout.contains("s.slow │ written before the loop"), "{}", out.stdout);
    assert!(reason(&out, "s.slow").contains("hostile 0.1.0 timed out after 1s"), "{}", reason(&out, "s.slow"));
}

#[test]
fn a_refused_allocation_does_not_turn_a_later_panic_into_out_of_memory() {
    let out = with_hostile()
        .pipeline(r#"pipeline "p" { stage "s" { step "bug" { uses "hostile" mode="alloc-then-panic" } } }"#)
        .args(&["run"])
        .expect(1);
    let why = out.step("s.bug")["reason"].as_str().unwrap_or("").to_string();
    assert!(why.starts_with("hostile 0.1.0 panicked: an unrelated bug"), "{why}");
    assert!(
        !why.contains("memory limit") && !why.contains("RUST_BACKTRACE") && !why.contains("wasm backtrace"),
        "{why}"
    );
}

#[test]
fn escaping_links_a_plugin_leaves_are_removed() {
    let granted = tempfile::tempdir().expect("tempdir");
    let g = granted.path().display();
    let out = with_hostile()
        .pipeline(&format!(
            r#"pipeline "p" {{ stage "s" {{ step "link" {{ uses "hostile" mode="symlink" target="{g}/passwd" value="../../../../../../etc/passwd"; allow-write "{g}" }} }} }}"#
        ))
        .args(&["run"])
        .expect(0);
    assert!(granted.path().join("passwd").symlink_metadata().is_err(), "the escaping link is gone");
    assert!(out.stdout.contains("removed the symbolic link"), "{}", out.stdout);
}

#[test]
fn grants_cannot_reach_pipes_own_files_even_through_references() {
    let out = with_hostile()
        .pipeline(
            r#"
pipeline "p" {
    env { WHERE "." }
    stage "s" { step "peek" { uses "hostile" mode="read" target="x"; allow-read "${env.WHERE}" } }
}
"#,
        )
        .file(".secrets.env", "K=v\n")
        .args(&["run"])
        .expect(1);
    let why = reason(&out, "s.peek");
    assert!(why.contains("reaches pipe's own files: it holds .pipe"), "{why}");
}

#[test]
fn tcp_reaches_only_granted_addresses() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        let mut line = String::new();
        std::io::BufReader::new(&conn).read_line(&mut line).expect("read");
        writeln!(&conn, "pong {}", line.trim()).expect("write");
    });
    let out = with_hostile()
        .pipeline(&format!(
            r#"
pipeline "p" {{
    stage "s" {{
        step "denied" {{ uses "hostile" mode="tcp" target="{addr}" value="x"; continue-on-error }}
        step "granted" {{ uses "hostile" mode="tcp" target="{addr}" value="ping"; allow-connect "{addr}" }}
    }}
}}
"#
        ))
        .args(&["run", "--jobs", "1"])
        .expect(0);
    assert_eq!(out.status("s.denied"), "failed");
    assert!(out.stdout.contains(&format!("allow-connect \"{addr}\"")), "{}", out.stdout);
    assert!(out.stdout.contains("answered: pong ping"), "{}", out.stdout);
    server.join().expect("server");
}

#[test]
fn a_busy_plugin_does_not_hold_up_other_steps() {
    let out = with_hostile()
        .pipeline(
            r#"
pipeline "p" {
    stage "s" {
        step "spin" { uses "hostile" mode="loop"; timeout "3s"; continue-on-error }
        step "quick" { run "true" }
    }
}
"#,
        )
        .args(&["run", "--jobs", "2", "--format", "json"])
        .expect(0);
    let finished: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "step-finished")
        .map(|e| e["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(finished, ["s.quick", "s.spin"], "the process step ends while the plugin spins");
}

#[test]
fn a_plugin_waiting_for_the_state_lock_is_stopped_by_its_timeout() {
    let test = with_hostile()
        .pipeline(r#"pipeline "p" { stage "s" { step "w" { uses "hostile" mode="state-set" target="late" value="v"; timeout "1s" } } }"#)
        .args(&["run"]);
    let lock_path = test.path().join(".pipe/state/p.lock");
    std::fs::create_dir_all(lock_path.parent().expect("dir")).expect("mkdir");
    let held = std::fs::File::create(&lock_path).expect("lock file");
    held.lock().expect("hold the state lock");
    let dir = test.path().to_path_buf();
    let out = test.command().output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let state = std::fs::read_to_string(dir.join(".pipe/state/p.json")).unwrap_or_default();
    assert!(!state.contains("late"), "a timed-out plugin writes nothing afterwards: {state}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("timed out after 1s"));
}
