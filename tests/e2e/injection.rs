//! THREATS.md, "a value": step outputs, plugin outputs and state, branch
//! names, matrix values and secrets reach commands as data — never as shell
//! code, extra words, or `argv` that other local users can read.

use crate::support::{Test, test_plugin};

/// Values an attacker writes, each of which ran `touch` before values were
/// passed as data.
const HOSTILE: &[&str] =
    &["x; touch pwned1", "$(touch pwned2)", "`touch pwned3`", "'; touch pwned4; '", "\"; touch pwned5; \""];

fn no_pwned(out: &crate::support::Output) {
    let found: Vec<String> = std::fs::read_dir(&out.dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pwned"))
        .collect();
    assert!(found.is_empty(), "a value ran as code: {found:?}\n{}", out.stdout);
}

#[test]
fn step_outputs_reach_commands_as_data_in_every_quoting() {
    let mut writes = String::new();
    for (i, v) in HOSTILE.iter().enumerate() {
        writes.push_str(&format!("v{i}<<EOF\n{v}\nEOF\n"));
    }
    let test = Test::new().file("outputs.txt", &writes).file("one-line.txt", "inline=a;touch pwned9\n");
    let mut uses = String::new();
    for i in 0..HOSTILE.len() {
        let r = format!("${{steps.s.make.outputs.v{i}}}");
        uses.push_str(&format!("            printf '[%s]\\n' {r} \"{r}\" '{r}' \"$(printf '%s' {r})\" > got{i}.txt\n"));
    }
    let out = test
        .pipeline(&format!(
            r#####"
pipeline "p" {{
    stage "s" {{
        step "make" {{ run "cat outputs.txt one-line.txt >> $PIPE_OUTPUT" }}
        step "use" {{
            needs "make"
            run #"""
{uses}            echo inline ${{steps.s.make.outputs.inline}}
            """#
        }}
    }}
}}
"#####
        ))
        .args(&["run"])
        .expect(0);
    no_pwned(&out);
    for (i, v) in HOSTILE.iter().enumerate() {
        let want = format!("[{v}]\n").repeat(4);
        assert_eq!(out.read(&format!("got{i}.txt")), want, "value {v:?}");
    }
    assert!(out.stdout.contains("inline a;touch pwned9"), "{}", out.stdout);
}

#[test]
fn matrix_values_and_pipeline_state_are_data() {
    let test = Test::new().pipeline(
        r#"
pipeline "p" {
    stage "m" {
        matrix { v "a;touch pwned1" "$(touch pwned2)" }
        step "echo" { run "echo matrix=${matrix.v}" }
    }
    stage "st" {
        step "echo" { run "echo state=${state.deploy.target}" }
    }
}
"#,
    );
    let set = test.pipe(&["state", "p", "set", "deploy.target", "$(touch pwned7); touch pwned8"], &[]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    let out = test.args(&["run"]).expect(0);
    no_pwned(&out);
    assert!(out.stdout.contains("matrix=a;touch pwned1"), "{}", out.stdout);
    assert!(out.stdout.contains("state=$(touch pwned7); touch pwned8"), "{}", out.stdout);
}

/// A plugin with no exec grant writes state; a later `run` reads it. The
/// sandbox's exec rule must not be bypassed through data.
#[test]
fn state_a_plugin_wrote_does_not_become_a_command() {
    let test = Test::new().file(".pipe/plugins/hostile.wasm", "");
    std::fs::copy(test_plugin("hostile"), test.path().join(".pipe/plugins/hostile.wasm")).expect("install");
    let out = test
        .pipeline(
            r#"
pipeline "p" {
    stage "s" {
        step "write" { uses "hostile" mode="state-set" target="next" value="x; touch pwned1 #" }
        step "read" { uses "hostile" mode="state-get" target="next"; needs "write" }
        step "state" { run "echo state=${state.hostile/next}"; needs "write" }
        step "output" { run "echo output=${steps.s.read.outputs.value}"; needs "read" }
    }
}
"#,
        )
        .args(&["run"])
        .expect(0);
    no_pwned(&out);
    assert!(out.stdout.contains("state=x; touch pwned1 #"), "{}", out.stdout);
    assert!(out.stdout.contains("output=x; touch pwned1 #"), "{}", out.stdout);
}

/// Branch names are chosen by whoever pushes them.
#[test]
fn a_hostile_branch_name_is_data() {
    for branch in ["x;touch${IFS}pwned1", "y$(touch${IFS}pwned2)"] {
        let out = Test::new()
            .pipeline(r#"pipeline "p" { stage "s" { step "b" { run "echo branch=${git.branch} > branch.txt" } } }"#)
            .git(branch)
            .args(&["run"])
            .expect(0);
        no_pwned(&out);
        assert_eq!(out.read("branch.txt"), format!("branch={branch}\n"));
    }
}

/// A secret reaches the command through its environment: not in `argv`
/// (`/proc/PID/cmdline` is readable by every local user), and a secret
/// holding quotes or `$(…)` neither breaks the command nor runs.
#[test]
fn secrets_never_reach_argv_and_arrive_intact() {
    let secret = "it's \"q\" $(touch pwned1) `touch pwned2`";
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    secrets { from-env "DEPLOY_TOKEN" }
    stage "s" {
        step "deploy" {
            run "printf %s ${secrets.DEPLOY_TOKEN} > token.txt; tr '\\0' ' ' < /proc/$$/cmdline > cmdline.txt"
        }
    }
}
"#,
        )
        .env("DEPLOY_TOKEN", secret)
        .args(&["run"])
        .expect(0);
    no_pwned(&out);
    assert_eq!(out.read("token.txt"), secret);
    let cmdline = out.read("cmdline.txt");
    assert!(cmdline.contains("PIPE_VALUE_1"), "the script expands a variable: {cmdline}");
    assert!(!cmdline.contains("it's"), "the secret is in argv: {cmdline}");
    assert!(!out.stdout.contains("it's"), "the secret is masked in the log: {}", out.stdout);
}

/// Only a POSIX shell expands `"${VAR}"`: a value cannot be handed to another
/// interpreter's source text, and the step says how to pass it instead.
#[test]
fn a_value_in_a_script_for_another_interpreter_is_refused() {
    let out = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    stage "s" {
        step "py" { run "print('${git.sha}')" shell="python3 -c" }
    }
}
"#,
        )
        .args(&["run"])
        .expect(1);
    let reason = out.step("s.py")["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("not a POSIX shell") && reason.contains("env"), "{reason}");
}

/// A step's output (and a value shown in its command line) cannot move the
/// cursor to overwrite pipe's own lines or forge a "✓".
#[test]
fn a_step_cannot_forge_pipe_s_console_output() {
    let out = Test::new()
        .file("forge.txt", "v=\r\u{1b}[2K\u{1b}[1A\u{1b}[32m✓ deploy.ship 0.1s\u{1b}[0m\n")
        .pipeline(
            r#"
pipeline "p" {
    stage "s" {
        step "a" { run "printf 'x\\r\\033[2K\\033[1A\\033]0;title\\007\\342\\234\\223 forged\\n'; cat forge.txt >> $PIPE_OUTPUT" }
        step "b" { run "echo ${steps.s.a.outputs.v}"; needs "a" }
    }
}
"#,
        )
        .args(&["run"])
        .expect(0);
    assert!(!out.stdout.contains('\r') && !out.stdout.contains('\u{1b}'), "{:?}", out.stdout);
    assert!(out.stdout.contains("✓ forged"), "the text itself stays: {}", out.stdout);
}
