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
