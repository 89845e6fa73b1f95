use std::path::Path;

use crate::support::PIPE;

/// Every pipeline shipped in `pipelines/` is valid.
#[test]
fn every_example_pipeline_passes_check() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let out = std::process::Command::new(PIPE)
        .args(["check"])
        .current_dir(root)
        .env("NO_COLOR", "1")
        .output()
        .expect("pipe check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let files = std::fs::read_dir(root.join("pipelines"))
        .expect("pipelines/")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "kdl"))
        .count();
    assert!(files > 0 && stdout.lines().count() >= files, "{stdout}");
}

/// The README's first command: the shop journey (build, test, image, v1, then
/// v2 blue-green under the probe) behind nginx, the same behind HAProxy, and
/// the progressive one (a canary behind nginx, a rolling fleet behind
/// HAProxy), each in a copy of `pipelines/`, torn down afterwards whatever happens.
#[test]
fn the_shop_journeys_run_behind_nginx_and_haproxy() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let test = crate::support::Test::new();
    let copy = std::process::Command::new("cp").arg("-r").arg(root.join("pipelines")).arg(test.path()).status();
    assert!(copy.expect("cp").success());
    struct Teardown<'a>(&'a crate::support::Test);
    impl Drop for Teardown<'_> {
        fn drop(&mut self) {
            for deploy in
                [&["shop"][..], &["shop-haproxy"], &["shop-progressive", "canary"], &["shop-progressive", "fleet"]]
            {
                let args: Vec<&str> = ["deploy", "stop"].iter().chain(deploy).copied().collect();
                let _ = self.0.pipe(&args, &[]);
            }
            let proxies = [
                "target/shop/nginx",
                "target/shop-haproxy/haproxy",
                "target/shop-progressive/nginx",
                "target/shop-progressive/haproxy",
            ];
            for proxy in proxies {
                let dir = self.0.path().join(proxy);
                let _ = std::process::Command::new("pipelines/shop/proxy.sh")
                    .arg("stop")
                    .arg(dir)
                    .current_dir(self.0.path())
                    .output();
            }
            let rt = crate::support::docker::runtime();
            let docker = crate::support::docker::docker(&rt);
            // Every build of the example, the tagged one and those a later build untagged.
            let filters =
                std::collections::HashMap::from([("label".to_string(), vec!["pipe.example=shop".to_string()])]);
            let list = bollard::query_parameters::ListImagesOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            };
            for image in rt.block_on(docker.list_images(Some(list))).unwrap_or_default() {
                let options = bollard::query_parameters::RemoveImageOptions { force: true, ..Default::default() };
                let _ = rt.block_on(docker.remove_image(&image.id, Some(options), None));
            }
        }
    }
    let _teardown = Teardown(&test);
    for (pipeline, port) in [("shop", 18080), ("shop-haproxy", 18090)] {
        let out = test.pipe(&["run", pipeline], &[]);
        if out.code != 0 {
            // What the proxy saw, to tell a failing backend from a cut connection.
            let logs = ["target/shop/nginx/logs/error.log", "target/shop/nginx/logs/access.log"];
            let tails: Vec<String> = logs
                .iter()
                .map(|l| {
                    let text = std::fs::read_to_string(test.path().join(l)).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    format!("── {l} ──\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
                })
                .collect();
            let record = out.record();
            let probe = record["steps"].as_array().and_then(|s| s.iter().find(|s| s["id"] == "v2.shop"));
            let probe = probe.map(|s| s["details"]["probe"].to_string()).unwrap_or_default();
            panic!("{pipeline}:\n{}\n{}\nprobe: {probe}\n{}", out.stdout, out.stderr, tails.join("\n"));
        }
        let record = out.record();
        let v2 = record["steps"].as_array().expect("steps").iter().find(|s| s["id"] == "v2.shop").expect("v2").clone();
        assert_eq!(v2["details"]["outcome"], "deployed", "{v2:#}");
        assert_eq!(v2["details"]["probe"]["total"]["non_2xx"], 0, "{v2:#}");
        assert_eq!(v2["details"]["probe"]["total"]["transport_errors"], 0, "{v2:#}");
        assert_eq!(crate::support::servers::get(port, "/version").as_deref().map(str::trim), Ok("v2"));
    }
    let out = test.pipe(&["run", "shop-progressive"], &[]);
    assert_eq!(out.code, 0, "shop-progressive:\n{}\n{}", out.stdout, out.stderr);
    let record = out.record();
    let step = |id: &str| record["steps"].as_array().and_then(|s| s.iter().find(|s| s["id"] == id)).cloned();
    let canary = step("canary-v2.canary").expect("canary-v2");
    assert_eq!(canary["details"]["outcome"], "deployed", "{canary:#}");
    assert!(
        canary["details"]["verdicts"]
            .as_array()
            .is_some_and(|v| v.len() == 2 && v.iter().all(|v| v["outcome"] == "pass"))
    );
    let fleet = step("fleet-v2.fleet").expect("fleet-v2");
    assert_eq!(fleet["details"]["outcome"], "deployed", "{fleet:#}");
    for d in [&canary, &fleet] {
        assert_eq!(d["details"]["probe"]["total"]["non_2xx"], 0, "{d:#}");
        assert_eq!(d["details"]["probe"]["total"]["transport_errors"], 0, "{d:#}");
    }
    for port in [18180, 18190] {
        assert_eq!(crate::support::servers::get(port, "/version").as_deref().map(str::trim), Ok("v2"));
    }
}
