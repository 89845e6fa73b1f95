//! A bound on the run records kept under one root: past it, the oldest go,
//! with their logs and report. A record is moved out of `runs/` in one rename
//! (so a reader sees it whole or not at all), then deleted.

use std::path::Path;

use super::record::runs_dir;
use super::{RunRecord, RunStatus};

/// Deletes all but the newest `keep` finished runs under `root`; a run still
/// in progress is never deleted. Returns how many were.
pub fn prune_runs(root: &Path, keep: usize) -> std::io::Result<usize> {
    let runs = runs_dir(root);
    let Ok(dir) = std::fs::read_dir(&runs) else { return Ok(0) };
    // Run ids sort by start time.
    let mut ids: Vec<String> = dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    ids.sort();
    let excess = ids.len().saturating_sub(keep);
    let trash = root.join(".pipe").join("runs-deleted");
    let mut deleted = 0;
    for id in ids.into_iter().take(excess) {
        let running = RunRecord::load(root, &id).is_ok_and(|r| r.settle().status == RunStatus::Running);
        if running {
            continue;
        }
        std::fs::create_dir_all(&trash)?;
        let gone = trash.join(&id);
        std::fs::rename(runs.join(&id), &gone)?;
        std::fs::remove_dir_all(&gone)?;
        deleted += 1;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::prune_runs;

    #[test]
    fn the_oldest_runs_go_and_a_running_one_stays() {
        let root = tempfile::tempdir().expect("tempdir");
        let runs = root.path().join(".pipe/runs");
        for (i, status) in ["succeeded", "running", "failed", "succeeded", "succeeded"].iter().enumerate() {
            let dir = runs.join(format!("2026010{i}-000000.000-0000"));
            std::fs::create_dir_all(dir.join("logs")).expect("mkdir");
            std::fs::write(dir.join("logs/a.log"), "x").expect("log");
            let record = serde_json::json!({
                "id": format!("2026010{i}-000000.000-0000"), "pipeline": "p", "file": "pipe.kdl",
                "git_sha": "", "git_branch": "", "started_at": "", "status": status, "duration_ms": 0,
                "pid": std::process::id(), "steps": [], "edges": []
            });
            std::fs::write(dir.join("run.json"), record.to_string()).expect("record");
        }
        assert_eq!(prune_runs(root.path(), 2).expect("prune"), 2);
        let mut left: Vec<String> = std::fs::read_dir(&runs)
            .expect("runs")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["20260101-000000.000-0000", "20260103-000000.000-0000", "20260104-000000.000-0000"]);
        assert_eq!(prune_runs(root.path(), 2).expect("prune again"), 0, "the running one stays");
    }
}
