//! What comes back from a shipped step, played by the attacker: a step on a
//! worker that plants hooks and approvals, forges pipe's file-back with the
//! nonce it read from PID 1, or floods the channel; and what a worker receives.
//! The attacking scripts are kept in `tests/fixtures/ship/`.

use libtest_mimic::Failed;

use super::Fixture;
use crate::support::Test;
use crate::support::docker::services_with;

const FORGE: &str = include_str!("../fixtures/ship/forge.sh");
const PLANT: &str = include_str!("../fixtures/ship/plant.sh");
const LOOK: &str = include_str!("../fixtures/ship/look.sh");

fn pipeline(f: &Fixture, name: &str, run: &str, extra: &str) -> String {
    format!(
        r#"
pipeline "{name}" {{
    executor "swarm" {{ constraint "node.hostname==pipe-node1"; registry "{registry}" }}
    container image="{image}"
    {extra}
    stage "s" {{ step "remote" {{ run "{run}" }} }}
}}
"#,
        image = f.image,
        registry = f.registry
    )
}

/// Every file under `dir` whose name starts with pipe's temporary prefix.
fn temporaries(dir: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("find").arg(dir).args(["-name", ".pipe-ship-*"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()).unwrap_or_default()
}

pub fn git_and_pipe_files_never_come_back(f: &Fixture) -> Result<(), Failed> {
    let _ = std::fs::remove_file("/tmp/pipe-hook-ran");
    let out = Test::new()
        .pipeline(&pipeline(f, "plant", "sh plant.sh", r#"secrets { from-file ".secrets.env"; }"#))
        .file("plant.sh", PLANT)
        .git("main")
        .file(".secrets.env", "TOKEN=mine\n")
        .args(&["run"])
        .run();
    check!(out.code == 0, "exit {}:\n{}\n{}", out.code, out.stdout, out.stderr);
    check!(out.read("ok.txt") == "ok\n", "the genuine file did not come back");
    for planted in [".git/hooks/post-checkout", ".pipe/approvals/x.decision", "vendor/lib/.git/config"] {
        check!(!out.exists(planted), "{planted} came back");
    }
    check!(out.read(".secrets.env") == "TOKEN=mine\n", "the secrets file was overwritten");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(out.dir.join("suid"))?.permissions());
    check!(mode & 0o7777 == 0o755, "suid came back with mode {mode:o}");
    check!(!std::path::Path::new("/tmp/pipe-hook-ran").exists(), "the hook ran");
    check!(services_with("pipe.pipeline", "plant").is_empty(), "services left behind");
    Ok(())
}

pub fn a_forged_file_back_is_ignored(f: &Fixture) -> Result<(), Failed> {
    let _ = std::fs::remove_file("/tmp/pipe-forged-outside");
    let out =
        Test::new().pipeline(&pipeline(f, "forge", "sh forge.sh", "")).file("forge.sh", FORGE).args(&["run"]).run();
    check!(out.code == 0, "exit {}:\n{}\n{}", out.code, out.stdout, out.stderr);
    check!(out.stdout.contains("forge: found the nonce"), "the attack did not run:\n{}", out.stdout);
    check!(out.read("real.txt") == "genuine-1\n", "real.txt: {:?}\n{}", out.read("real.txt"), out.stdout);
    check!(out.read("real-2.txt") == "genuine-2\n", "real-2.txt: {:?}", out.read("real-2.txt"));
    for forged in ["forged.txt", "late.txt", "forged-stderr.txt", ".git/hooks/post-checkout"] {
        check!(!out.exists(forged), "the forged {forged} was written");
    }
    check!(!std::path::Path::new("/tmp/pipe-forged-outside").exists(), "a file was written outside");
    // The forged lines are the step's text, shown as such.
    check!(out.stdout.contains("workspace/forged.txt"), "the forged lines vanished from the log:\n{}", out.stdout);
    Ok(())
}

pub fn more_than_the_bound_fails_and_writes_nothing(f: &Fixture) -> Result<(), Failed> {
    let run = "echo small > small.txt && dd if=/dev/zero of=big.bin bs=1024 count=200";
    let out =
        Test::new().pipeline(&pipeline(f, "flood", run, "")).env("PIPE_SWARM_RETURN_MAX", "64KiB").args(&["run"]).run();
    let all = format!("{}{}", out.stdout, out.stderr);
    check!(out.code != 0, "the run succeeded:\n{all}");
    // small.txt and big.bin come back in `find`'s order: the bound per file or in all is hit.
    check!(all.contains("64.0 KiB, the bound on") && all.contains("nothing was written"), "no clear error:\n{all}");
    check!(!out.exists("big.bin") && !out.exists("small.txt"), "a file came back anyway");
    let left = temporaries(&out.dir);
    check!(left.is_empty(), "temporary files left: {left:?}");
    Ok(())
}

pub fn shipped_image_holds_no_git_nor_secrets(f: &Fixture) -> Result<(), Failed> {
    let out = Test::new()
        .pipeline(&pipeline(f, "look", "sh look.sh", r#"secrets { from-file ".secrets.env"; }"#))
        .file("look.sh", LOOK)
        .file("vendor/lib/.git/HEAD", "ref: refs/heads/main\n")
        .file("vendor/lib/code.c", "int x;\n")
        .file(".pipeignore", "!.git\n!.secrets.env\n")
        .git("main")
        .file(".secrets.env", "TOKEN=mine\n")
        .args(&["run"])
        .run();
    check!(out.code == 0, "exit {}:\n{}\n{}", out.code, out.stdout, out.stderr);
    check!(out.stdout.contains("looked") && out.stdout.contains("code.c"), "the step did not look:\n{}", out.stdout);
    check!(!out.stdout.contains("SHIPPED"), "shipped what stays home:\n{}", out.stdout);
    Ok(())
}
