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
/// v2 blue-green under the probe) behind nginx, and the same behind HAProxy,
/// each in a copy of `pipelines/`, torn down afterwards whatever happens.
#[test]
fn the_shop_journey_runs_behind_nginx_and_haproxy() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let test = crate::support::Test::new();
    let copy = std::process::Command::new("cp").arg("-r").arg(root.join("pipelines")).arg(test.path()).status();
    assert!(copy.expect("cp").success());
    struct Teardown<'a>(&'a crate::support::Test);
    impl Drop for Teardown<'_> {
        fn drop(&mut self) {
            for (pipeline, proxy) in [("shop", "target/shop/nginx"), ("shop-haproxy", "target/shop-haproxy/haproxy")] {
                let _ = self.0.pipe(&["deploy", "stop", pipeline], &[]);
                let dir = self.0.path().join(proxy);
                let _ = std::process::Command::new("pipelines/shop/proxy.sh")
                    .arg("stop")
                    .arg(dir)
                    .current_dir(self.0.path())
                    .output();
            }
            let rt = crate::support::docker::runtime();
            let docker = crate::support::docker::docker(&rt);
            let options = bollard::query_parameters::RemoveImageOptions { force: true, ..Default::default() };
            let _ = rt.block_on(docker.remove_image("pipe-shop:latest", Some(options), None));
        }
    }
    let _teardown = Teardown(&test);
    for (pipeline, port) in [("shop", 18080), ("shop-haproxy", 18090)] {
        let out = test.pipe(&["run", pipeline], &[]);
        assert_eq!(out.code, 0, "{pipeline}:\n{}\n{}", out.stdout, out.stderr);
        let record = out.record();
        let v2 = record["steps"].as_array().expect("steps").iter().find(|s| s["id"] == "v2.shop").expect("v2").clone();
        assert_eq!(v2["details"]["outcome"], "deployed", "{v2:#}");
        assert_eq!(v2["details"]["probe"]["total"]["non_2xx"], 0, "{v2:#}");
        assert_eq!(v2["details"]["probe"]["total"]["transport_errors"], 0, "{v2:#}");
        assert_eq!(crate::support::servers::get(port, "/version").as_deref().map(str::trim), Ok("v2"));
    }
}
