//! The step cache through the real binary: a hit restores files and outputs
//! and runs nothing; each part of the key invalidates it; `--no-cache`, a
//! corrupt entry and `pipe cache clear` behave.

use crate::support::docker::{Image, docker, runtime};
use crate::support::{Output, Test};

const PIPELINE: &str = r#"
pipeline "svc" {
    secrets { from-env "TOKEN" }
    stage "build" {
        step "app" {
            run "echo ran >> runs.txt; mkdir -p out; cp src/main.txt out/app; echo version=$(cat src/main.txt) >> $PIPE_OUTPUT"
            env { MODE "${env.MODE}"; TOKEN "${secrets.TOKEN}" }
            cache { inputs "src/**"; outputs "out" }
        }
        step "use" { needs "app"; run "echo using ${steps.build.app.outputs.version}" }
    }
}
"#;

fn run(test: &Test, args: &[&str], mode: &str, token: &str) -> Output {
    let mut all = vec!["run"];
    all.extend(args);
    let out = test.pipe(&all, &[("MODE", mode), ("TOKEN", token)]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    out
}

fn runs(test: &Test) -> usize {
    std::fs::read_to_string(test.path().join("runs.txt")).unwrap_or_default().lines().count()
}

fn hit(out: &Output) -> bool {
    out.step("build.app")["details"]["cache"]["hit"] == true
}

#[test]
fn a_cached_step_is_restored_and_every_part_of_its_key_invalidates_it() {
    let test = Test::new().pipeline(PIPELINE).file("src/main.txt", "1.0").file("README", "docs");
    let first = run(&test, &[], "fast", "s3cret-token-value");
    assert!(!hit(&first) && runs(&test) == 1);

    std::fs::remove_dir_all(test.path().join("out")).expect("clean");
    let second = run(&test, &[], "fast", "s3cret-token-value");
    assert!(hit(&second), "{}", second.stdout);
    assert_eq!(runs(&test), 1, "nothing ran");
    assert_eq!(std::fs::read_to_string(test.path().join("out/app")).expect("restored"), "1.0");
    assert!(second.stdout.contains("using 1.0"), "outputs are restored: {}", second.stdout);
    assert!(second.stdout.contains("cached (key ") && second.stdout.contains("cached, saved"), "{}", second.stdout);

    std::fs::write(test.path().join("README"), "not an input").expect("write");
    assert!(hit(&run(&test, &[], "fast", "s3cret-token-value")), "a file that is not an input");
    std::fs::write(test.path().join("src/main.txt"), "1.1").expect("write");
    let changed = run(&test, &[], "fast", "s3cret-token-value");
    assert!(!hit(&changed), "an input changed");
    // A miss says which part of the key changed, in the log and in the record.
    assert!(changed.stdout.contains("cache miss: input src/main.txt changed"), "{}", changed.stdout);
    assert_eq!(changed.step("build.app")["details"]["cache"]["changed"][0], "input src/main.txt changed");
    let env = run(&test, &[], "slow", "s3cret-token-value");
    assert!(!hit(&env), "the env changed");
    assert!(env.stdout.contains("cache miss: the command or its environment changed"), "{}", env.stdout);
    let listed = test.pipe(&["cache"], &[]);
    assert!(listed.stdout.contains("build.app"), "`pipe cache` lists the entry by step: {}", listed.stdout);
    assert!(!hit(&run(&test, &[], "slow", "other-token-value")), "a secret changed");
    assert!(hit(&run(&test, &[], "slow", "other-token-value")));
    let before = runs(&test);
    assert!(!hit(&run(&test, &["--no-cache"], "slow", "other-token-value")));
    assert_eq!(runs(&test), before + 1, "--no-cache runs it");

    // Secrets reach the cache only through the key's hash.
    let found = std::process::Command::new("grep")
        .args(["-r", "-l", "other-token-value", ".pipe/cache"])
        .current_dir(test.path())
        .output()
        .expect("grep");
    assert!(found.stdout.is_empty(), "a secret in the cache: {}", String::from_utf8_lossy(&found.stdout));

    // A corrupt entry is a miss, not a failure.
    for entry in std::fs::read_dir(test.path().join(".pipe/cache")).expect("cache dir").flatten() {
        std::fs::write(entry.path().join("entry.json"), "{ corrupt").expect("corrupt");
    }
    assert!(!hit(&run(&test, &[], "slow", "other-token-value")));
    assert!(hit(&run(&test, &[], "slow", "other-token-value")));

    let usage = test.pipe(&["cache"], &[]);
    assert!(usage.stdout.contains("entries"), "{}", usage.stdout);
    assert_eq!(test.pipe(&["cache", "clear"], &[]).code, 0);
    assert!(!hit(&run(&test, &[], "slow", "other-token-value")), "cleared");
}

/// A tag moved to another image (same name, new digest) is a miss.
#[test]
fn a_container_step_is_keyed_on_its_image_digest() {
    let first = Image::busybox();
    let ctx = tempfile::tempdir().expect("context");
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {}\nLABEL pipe.cache-test=2\n", first.tag))
        .expect("Dockerfile");
    let second = Image::build(ctx.path(), "pipe-test-busybox2");
    let alias = Alias(format!("pipe-test-cache-{}", std::process::id()));
    alias.point_at(&first.tag);
    let test = Test::new()
        .pipeline(&format!(
            r#"
pipeline "c" {{
    stage "s" {{
        step "in-box" {{
            container image="{}:latest" pull="never"
            run "echo ran"
            cache {{ inputs "src/**" }}
        }}
    }}
}}
"#,
            alias.0
        ))
        .file("src/x", "1");
    let go = || {
        let out = test.pipe(&["run"], &[]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        out.step("s.in-box")["details"]["cache"]["hit"] == true
    };
    assert!(!go());
    assert!(go(), "same image, same inputs");
    alias.point_at(&second.tag);
    assert!(!go(), "the tag now names other bytes");
}

struct Alias(String);

impl Alias {
    fn point_at(&self, image: &str) {
        let rt = runtime();
        let options =
            bollard::query_parameters::TagImageOptions { repo: Some(self.0.clone()), tag: Some("latest".into()) };
        rt.block_on(docker(&rt).tag_image(image, Some(options))).expect("docker tag");
    }
}

impl Drop for Alias {
    fn drop(&mut self) {
        let rt = runtime();
        let options = bollard::query_parameters::RemoveImageOptions { force: false, ..Default::default() };
        let _ = rt.block_on(docker(&rt).remove_image(&format!("{}:latest", self.0), Some(options), None));
    }
}
