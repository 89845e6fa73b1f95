//! One run of a pipeline at a time: an exclusive OS file lock, released when the
//! process ends however it ends, so a killed `pipe` never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use super::{StateError, file_safe};

pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire(root: &Path, pipeline: &str, run_id: &str, wait: bool) -> Result<RunLock, StateError> {
        let dir = root.join(".pipe").join("locks");
        std::fs::create_dir_all(&dir).map_err(StateError::io("create", &dir))?;
        let path = dir.join(format!("{}.lock", file_safe(pipeline)));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StateError::io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder writes a short line; a forged huge one is cut, and shown as text.
                let _ = (&mut file).take(256).read_to_string(&mut holder);
                let holder: String = holder.trim().chars().filter(|c| !c.is_control()).collect();
                let holder = if holder.is_empty() { String::new() } else { format!(" ({holder})") };
                if !wait {
                    return Err(StateError::Locked { pipeline: pipeline.to_string(), holder });
                }
                // Queued silently, a run looks hung.
                eprintln!("waiting for the running run of `{pipeline}`{holder} to finish…");
                file.lock().map_err(StateError::io("lock", &path))?;
            }
            Err(TryLockError::Error(e)) => return Err(StateError::io("lock", &path)(e)),
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "run {run_id}, pid {}", std::process::id());
        Ok(RunLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock file is pipe's state and a step can rewrite it: a refusal
    /// shows its holder line bounded and without control characters (no
    /// cleared screen, no forged line).
    #[test]
    fn a_forged_holder_line_is_shown_bounded_and_as_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = RunLock::acquire(dir.path(), "p", "run-1", false).expect("first");
        let path = dir.path().join(".pipe/locks/p.lock");
        std::fs::write(&path, format!("\u{1b}[2J\r✓ deployed\n{}", "x".repeat(100_000))).expect("forge");
        let Err(StateError::Locked { holder, .. }) = RunLock::acquire(dir.path(), "p", "run-2", false) else {
            panic!("a held lock was taken twice");
        };
        assert!(!holder.contains(|c: char| c.is_control()), "{holder:?}");
        assert!(holder.len() < 300, "{} bytes", holder.len());
        assert!(holder.contains("[2J✓ deployed"), "{holder:?}");
        drop(held);
        assert!(RunLock::acquire(dir.path(), "p", "run-3", false).is_ok(), "released with its holder");
    }
}
