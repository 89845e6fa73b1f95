use std::time::{Duration, Instant};

use crate::support::servers::{Backend, Nginx, get};
use crate::support::{Test, test_plugin};

fn kdl_path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn hostile_plugins_fail_only_their_own_step() {
    let hostile = kdl_path(&test_plugin("hostile"));
    let server = Backend::fixed(200, "secret data");
    let granted = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let escaped = outside.path().join("escaped");
    let step = |name: &str, mode: &str, extra: &str| {
        format!(
            "        step \"{name}\" {{ uses \"{hostile}\" mode=\"{mode}\" {extra}; continue-on-error #true; timeout \"2s\" }}\n"
        )
    };
    let mut steps = String::new();
    steps += &step("loop", "loop", "");
    steps += &step("alloc", "alloc", "");
    steps += &step("read", "read", r#"target="/etc/passwd""#);
    steps += &format!(
        "        step \"write\" {{ uses \"{hostile}\" mode=\"write\" target=\"{}\"; allow-write \"{}\"; continue-on-error #true }}\n",
        escaped.display(),
        granted.path().display()
    );
    steps += &format!(
        "        step \"connect\" {{ uses \"{hostile}\" mode=\"connect\" target=\"http://{}/\"; allow-net \"127.0.0.1:9\"; continue-on-error #true }}\n",
        server.addr()
    );
    steps += &step("exec", "exec", "");
    steps += &step("panic", "panic", "");
    steps += &step("flood", "flood", "");
    steps += &step("env", "env", "");
    let pipeline = format!(
        "pipeline \"p\" {{\n    stage \"attack\" {{\n{steps}        step \"bystander\" {{ run \"echo unharmed\" }}\n    }}\n}}\n"
    );
    let out = Test::new().pipeline(&pipeline).env("SECRET_IN_ENV", "x").args(&["run", "--jobs", "4"]).expect(0);
    let reason = |id: &str| {
        let s = out.step(id);
        assert_eq!(s["status"], "failed", "{id}: {s:#}");
        assert_eq!(s["allowed_failure"], true);
        format!("{} | {}", s["reason"].as_str().unwrap_or(""), s["tail"])
    };
    assert!(reason("attack.loop").contains("hostile 0.1.0 timed out after 2s"), "{}", reason("attack.loop"));
    assert!(
        reason("attack.alloc").contains("hostile 0.1.0 exceeded its memory limit of 64 MiB"),
        "{}",
        reason("attack.alloc")
    );
    assert!(reason("attack.read").contains("allow-read \\\"/etc\\\""), "{}", reason("attack.read"));
    assert!(reason("attack.write").contains("allow-write"), "{}", reason("attack.write"));
    assert!(!escaped.exists(), "nothing was written outside the grant");
    let connect = reason("attack.connect");
    assert!(connect.contains(&format!("allow-net \\\"{}\\\"", server.addr())), "{connect}");
    assert!(server.seen.lock().expect("lock").is_empty(), "the server was never reached");
    assert!(reason("attack.exec").contains(r#"allow-exec \"sh\" \"-c\" \"id\""#), "{}", reason("attack.exec"));
    assert!(reason("attack.panic").contains("hostile 0.1.0 panicked"), "{}", reason("attack.panic"));
    assert!(reason("attack.panic").contains("on purpose"));
    assert!(reason("attack.flood").contains("wrote more than 8 MiB of log"), "{}", reason("attack.flood"));
    assert_eq!(out.status("attack.env"), "succeeded");
    assert_eq!(out.step("attack.env")["outputs"]["env"], "", "no ambient environment");
    assert_eq!(out.status("attack.bystander"), "succeeded");
}

#[test]
fn a_plugin_for_another_interface_version_is_refused_at_its_step() {
    let test = Test::new().file("future.wasm", "");
    std::fs::copy(test_plugin("future"), test.path().join("future.wasm")).expect("copy");
    let out = test
        .pipeline(r#"pipeline "p" { stage "s" { step "x" { uses "./future.wasm" }; step "y" { run "touch ran" } } }"#)
        .args(&["run"])
        .expect(2);
    // Read from the component's own imports and exports, not a stamp it could fake.
    assert!(
        out.stderr.contains("./future.wasm was built for plugin interface 9.0.0; this pipe speaks 0.1.0, 0.2.0"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("built for interface 9.0.0") && out.stderr.contains("pipe.kdl:1:"), "{}", out.stderr);
    assert!(!out.exists("ran"));
}

#[test]
fn a_plugin_of_interface_0_1_still_loads_and_runs() {
    let test = Test::new().file(".pipe/plugins/legacy.wasm", "");
    std::fs::copy(test_plugin("legacy"), test.path().join(".pipe/plugins/legacy.wasm")).expect("install");
    let dir = test.path().to_path_buf();
    let out = test
        .pipeline(r#"pipeline "p" { stage "s" { step "old" { uses "legacy" greeting="hello" } } }"#)
        .args(&["run"])
        .expect(0);
    assert!(out.stdout.contains("legacy says hello"), "{}", out.stdout);
    assert_eq!(out.step("s.old")["outputs"]["said"], "hello");
    let state = Test::new().args(&["-C", dir.to_str().expect("utf-8"), "state", "p"]).expect(0);
    assert!(state.stdout.contains("legacy/said=hello"), "its state is namespaced too: {}", state.stdout);
    let inspect = Test::new().args(&["plugin", "inspect", test_plugin("legacy").to_str().expect("utf-8")]).expect(0);
    assert!(inspect.stdout.contains("interface   pipe:plugin@0.1.0"), "{}", inspect.stdout);
}

#[test]
fn http_check_waits_until_the_service_is_healthy() {
    let service = Backend::start(|n| if n < 3 { (503, "starting".into()) } else { (200, r#"{"status":"ok"}"#.into()) });
    let out = Test::new()
        .pipeline(&format!(
            r#"
pipeline "p" {{
    stage "deploy" {{
        step "wait" {{
            uses "http-check" url="http://{addr}/health" expect=200 attempts=10 interval="50ms" json-field="status=ok"
            allow-net "{addr}"
        }}
    }}
    stage "after" {{ needs "deploy"; step "show" {{ run "test ${{steps.deploy.wait.outputs.status}} = 200" }} }}
}}
"#,
            addr = service.addr()
        ))
        .args(&["run"])
        .expect(0);
    assert_eq!(service.seen.lock().expect("lock").len(), 4);
    assert!(out.stdout.contains("attempt 3/10: status 503 (expected 200)"), "{}", out.stdout);
    assert!(out.stdout.contains("→ 200"));
}

#[test]
fn nginx_switch_moves_traffic_and_refuses_a_config_nginx_rejects() {
    let (blue, green) = (Backend::fixed(200, "blue"), Backend::fixed(200, "green"));
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &blue.addr());
    assert_eq!(get(nginx.port, "/").as_deref(), Ok("blue"));
    let grant = |cmd: String| {
        let words: Vec<String> = cmd.split_whitespace().map(|w| format!("\"{w}\"")).collect();
        format!("allow-exec {}", words.join(" "))
    };
    let switch = |servers: &str| {
        format!(
            "pipeline \"p\" {{\n  stage \"s\" {{\n    step \"switch\" {{\n      uses \"nginx-switch\" file=\"{p}/app.inc\" upstream=\"app\" servers=\"{servers}\" test=\"{t}\" reload=\"{r}\"\n      allow-write \"{p}\"\n      {gt}\n      {gr}\n    }}\n  }}\n}}\n",
            p = nginx.prefix.display(),
            t = nginx.args("test"),
            r = nginx.args("reload"),
            gt = grant(nginx.args("test")),
            gr = grant(nginx.args("reload")),
        )
    };
    let test = Test::new().pipeline(&switch(&green.addr()));
    let dir = test.path().to_path_buf();
    let out = test.args(&["run"]).expect(0);
    // A reload is asynchronous: for a while the old worker (blue) still accepts
    // connections beside the new one. Done means green, many times in a row.
    let start = Instant::now();
    let mut greens = 0;
    while greens < 20 {
        greens = if get(nginx.port, "/").as_deref() == Ok("green") { greens + 1 } else { 0 };
        assert!(start.elapsed() < Duration::from_secs(20), "traffic never settled on green");
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(out.step("s.switch")["outputs"]["current"], format!("{}=1", green.addr()));

    std::fs::write(dir.join("pipe.kdl"), switch("127.0.0.1:70000")).expect("rewrite");
    let before = std::fs::read_to_string(nginx.prefix.join("app.inc")).expect("inc");
    let bad = Test::new().args(&["-C", dir.to_str().expect("utf-8"), "run"]).expect(1);
    let _ = out;
    assert!(bad.stdout.contains("-t` failed with status"), "{}\n{}", bad.stdout, bad.stderr);
    assert!(bad.stdout.contains("restored the previous"), "{}", bad.stdout);
    assert_eq!(std::fs::read_to_string(nginx.prefix.join("app.inc")).expect("inc"), before);
    assert_eq!(get(nginx.port, "/").as_deref(), Ok("green"), "the old upstream still serves");
    let state = Test::new()
        .args(&["-C", dir.to_str().expect("utf-8"), "state", "p", "get", "nginx-switch/app.current"])
        .expect(0);
    assert_eq!(state.stdout.trim(), format!("{}=1", green.addr()));
}

#[test]
fn notify_posts_the_failure_from_an_on_failure_hook() {
    let hook = Backend::start(|n| if n == 0 { (503, "busy".into()) } else { (200, "ok".into()) });
    let url = format!("http://{}/hooks/T0KEN-very-secret", hook.addr());
    let out = Test::new()
        .pipeline(&format!(
            r#"
pipeline "shop" {{
    secrets {{ from-env "CHAT_WEBHOOK" }}
    stage "build" {{ step "compile" {{ run "exit 3" }} }}
    on-failure {{
        step "tell" {{
            uses "notify" url="${{secrets.CHAT_WEBHOOK}}" format="slack" pipeline="${{run.pipeline}}" status="failed" failed="${{run.failed-steps}}" logs="pipe logs ${{run.id}}"
            allow-net "{addr}"
        }}
    }}
}}
"#,
            addr = hook.addr()
        ))
        .env("CHAT_WEBHOOK", &url)
        .args(&["run"])
        .expect(1);
    assert_eq!(out.status("on-failure.tell"), "succeeded");
    let seen = hook.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "retried after the 503");
    let (method, path, body) = &seen[1];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/hooks/T0KEN-very-secret"));
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    let text = json["text"].as_str().expect("slack text");
    assert!(text.contains("shop failed (failed: build.compile)") && text.contains("pipe logs"), "{text}");
    assert!(!out.stdout.contains("T0KEN-very-secret"), "{}", out.stdout);
}

#[test]
fn a_changed_plugin_is_refused_until_locked_again() {
    let original = std::fs::read(test_plugin("hostile")).expect("read");
    let test = Test::new()
        .pipeline(r#"pipeline "p" { stage "s" { step "x" { uses "hostile" mode="ok" } } }"#)
        .file(".pipe/plugins/hostile.wasm", "");
    let dir = test.path().to_path_buf();
    let plugin = dir.join(".pipe/plugins/hostile.wasm");
    std::fs::write(&plugin, &original).expect("install");
    let first = test.command().arg("run").output().expect("run");
    assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stderr));
    let lock = std::fs::read_to_string(dir.join("pipe.lock")).expect("lock");
    assert!(lock.contains("\"hostile\""), "{lock}");
    // Relative to the repository: the same file in every checkout.
    assert!(lock.contains("\"origin\": \".pipe/plugins/hostile.wasm\""), "{lock}");
    assert!(!lock.contains(dir.to_str().expect("utf-8")), "an absolute path: {lock}");

    // The same component with one more custom section: a different digest.
    let mut changed = original.clone();
    changed.extend_from_slice(&[0x00, 0x04, 0x02, b'z', b'z', b'1']);
    std::fs::write(&plugin, &changed).expect("replace");
    let refused = test.command().arg("run").output().expect("run");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("plugin `hostile` changed"));

    let locked = test.command().args(["plugin", "lock"]).output().expect("lock");
    assert_eq!(locked.status.code(), Some(0), "{}", String::from_utf8_lossy(&locked.stderr));
    let _ = test.args(&["run"]).expect(0);
}

#[test]
fn a_corrupt_cache_entry_is_recompiled_not_fatal() {
    let cache = tempfile::tempdir().expect("cache");
    let pipeline = r#"pipeline "p" { stage "s" { step "x" { uses "notify" url="http://127.0.0.1:9/"; allow-net "127.0.0.1:9" } } }"#;
    let check = || {
        Test::new()
            .pipeline(pipeline)
            .env("PIPE_CACHE_DIR", cache.path().to_str().expect("utf-8"))
            .args(&["check"])
            .expect(0)
    };
    check();
    let entries: Vec<_> = std::fs::read_dir(cache.path().join("plugins")).expect("cache dir").flatten().collect();
    assert_eq!(entries.len(), 1, "one compiled plugin cached");
    std::fs::write(entries[0].path(), b"not native code at all").expect("corrupt");
    check();
    assert!(std::fs::metadata(entries[0].path()).expect("recached").len() > 1000, "recompiled and cached again");
}

#[test]
fn plugin_tools_inspect_and_run_one_plugin_alone() {
    let hostile = test_plugin("hostile");
    let path = hostile.to_str().expect("utf-8");
    let inspect = Test::new().args(&["plugin", "inspect", path]).expect(0);
    assert!(inspect.stdout.contains("hostile 0.1.0 — Misbehaves on purpose"), "{}", inspect.stdout);
    assert!(inspect.stdout.contains("interface   pipe:plugin@0.2.0"), "{}", inspect.stdout);
    assert!(inspect.stdout.contains("roles       uses"), "{}", inspect.stdout);
    // Built-ins by name, as a step's `uses` names them; and the list of what can be named.
    let builtin = Test::new().args(&["plugin", "inspect", "http-check"]).expect(0);
    assert!(
        builtin.stdout.contains("http-check ") && builtin.stdout.contains("from        built-in"),
        "{}",
        builtin.stdout
    );
    let unknown = Test::new().args(&["plugin", "inspect", "http-chek"]).expect(2);
    assert!(unknown.stderr.contains("did you mean `http-check`?"), "{}", unknown.stderr);
    let listed = Test::new().args(&["plugin", "list"]).expect(0);
    for name in ["http-check", "nginx-switch", "haproxy-switch", "notify"] {
        assert!(listed.stdout.lines().any(|l| l.starts_with(name) && l.ends_with("built-in")), "{}", listed.stdout);
    }
    let ok = Test::new().args(&["plugin", "run", path, "mode=ok"]).expect(0);
    assert!(ok.stdout.contains("output: done=yes"), "{}", ok.stdout);
    let denied = Test::new().args(&["plugin", "run", path, "mode=exec"]).expect(1);
    assert!(denied.stderr.contains("allow-exec"), "{}", denied.stderr);
    let granted = Test::new().args(&["plugin", "run", path, "mode=exec", "--allow-exec", "sh -c id"]).expect(0);
    assert!(granted.stdout.contains("uid="), "{}", granted.stdout);
}

#[test]
fn a_scaffolded_plugin_builds_and_runs_as_is() {
    let test = Test::new();
    let dir = test.path().to_path_buf();
    let scaffold = test.command().args(["plugin", "new", "say-hello"]).output().expect("new");
    assert_eq!(scaffold.status.code(), Some(0), "{}", String::from_utf8_lossy(&scaffold.stderr));
    // Share the built-in plugins' target directory: the SDK is compiled already.
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm-plugins");
    let built =
        test.command().args(["plugin", "build", "say-hello"]).env("CARGO_TARGET_DIR", &target).output().expect("build");
    let stdout = String::from_utf8_lossy(&built.stdout).to_string();
    assert_eq!(built.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&built.stderr));
    let wasm = stdout.lines().find_map(|l| l.strip_prefix("built ")).expect("a built component").to_string();
    let out = test.args(&["plugin", "run", &wasm, "message=hi there"]).expect(0);
    assert!(out.stdout.contains("hi there") && out.stdout.contains("output: message=hi there"), "{}", out.stdout);
    assert!(dir.join("say-hello/src/lib.rs").exists());
}
