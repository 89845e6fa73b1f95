//! The workspace on a multi-node swarm: bind mounts do not cross nodes, so a
//! step that may land anywhere gets its workspace as an image layer and gives
//! its changes back through its log.
//!
//! Out: the pipeline's directory (less `.pipe/` and what `.pipeignore` excludes)
//! becomes a layer on top of the step's image, pushed to the swarm's registry
//! and run by digest, so whichever node runs the task pulls exactly it. Unchanged
//! workspaces reuse the engine's build cache and the registry's layers.
//!
//! Back: after the step's command, a few lines of `sh` print every file under
//! `/workspace` and `/pipe/outputs` newer than the shipped layer, base64-encoded
//! between markers that carry a per-step nonce. The log stream reaches pipe from
//! any node through the manager; pipe takes those lines out of the step's log and
//! writes the files back. A step's image needs `sh`, `find` and `base64`
//! (busybox, Debian and Alpine images have them). Deleted files are not carried
//! back.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, RemoveImageOptions};
use tokio_util::sync::CancellationToken;

use crate::docker::{self, DockerError, DockerIgnore};
use crate::event::Stream;
use crate::run::container::{ContainerRun, OUTPUTS, WORKSPACE};
use crate::step::StepLog;

const DOCKERFILE: &str = "Dockerfile";
/// Inside the image: its mtime is the shipping time less a margin, so that
/// `find -newer` (whole seconds in busybox) misses nothing the step writes.
const MARK: &str = "/pipe/shipped";

/// Builds, pushes and removals of shipped images, one at a time: steps that
/// ship the same workspace share its cached layers, and removing one step's
/// image must not pull a layer from under a build that is reusing it.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The step's workspace as pushed: what the task runs, and how it answers.
pub struct Shipment {
    /// `registry/pipe-workspace@sha256:…`
    pub image: String,
    local_tag: String,
    nonce: String,
}

impl Shipment {
    /// Builds the step's image with the workspace in it and pushes it.
    pub async fn send(
        docker: &Docker,
        spec: &ContainerRun,
        registry: &str,
        log: &StepLog,
        cancel: &CancellationToken,
    ) -> Result<Shipment, DockerError> {
        let nonce = format!("{:016x}", rand_u64());
        let local_tag = format!("{registry}/pipe-workspace:{}", &docker::docker_name(&spec.name).to_lowercase());
        let (dir, base, user) = (spec.workspace.clone(), spec.image.clone(), spec.user.clone());
        let context = tokio::task::spawn_blocking(move || context(&dir, &base, user.as_deref()))
            .await
            .map_err(|e| DockerError::Build {
                reason: format!("internal error in pipe while tarring the workspace: {e}"),
            })?
            .map_err(|reason| DockerError::Build { reason })?;
        let size = bytesize::ByteSize::b(context.len() as u64);
        log.note(&format!("shipping the workspace ({size}) through {registry}"));
        // No labels: the legacy builder makes each one a step of its own, and
        // each step is a container committed (a second apiece on some storage drivers).
        let options = BuildImageOptions {
            t: Some(local_tag.clone()),
            dockerfile: DOCKERFILE.into(),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let quiet = StepLog::sink(&spec.name);
        let pushed = {
            let _turn = ENGINE.lock().await;
            match docker::build(docker, options, context, &quiet, cancel).await {
                Ok(()) => docker::push(docker, &local_tag, &quiet, cancel).await,
                Err(e) => Err(e),
            }
        };
        let shipment = Shipment { image: String::new(), local_tag, nonce };
        match pushed {
            Ok(image) => Ok(Shipment { image, ..shipment }),
            Err(e) => {
                shipment.discard(docker).await;
                Err(e)
            }
        }
    }

    /// The step's command, then the lines that carry its changes back.
    pub fn command(&self, cmd: &[String]) -> Vec<String> {
        let n = &self.nonce;
        let script = format!(
            r#""$@"; rc=$?
cd / || exit $rc
find {ws} {out} -newer {mark} -type f -exec sh -c 'for f; do case "$f" in *"
"*) continue;; esac; m=644; [ -x "$f" ] && m=755; echo "::pipe-ship:{n}:file $m $f"; base64 "$f"; done' sh {{}} +
echo "::pipe-ship:{n}:end"
exit $rc"#,
            ws = &WORKSPACE[1..],
            out = &OUTPUTS[1..],
            mark = &MARK[1..],
        );
        ["sh".to_string(), "-c".into(), script, "pipe-step".into()].into_iter().chain(cmd.iter().cloned()).collect()
    }

    pub fn receiver(&self) -> Receiver {
        Receiver { nonce: self.nonce.clone(), ..Default::default() }
    }

    /// Removes the local tag (the registry keeps the layers, shared by later steps).
    pub async fn discard(self, docker: &Docker) {
        let _turn = ENGINE.lock().await;
        let options = RemoveImageOptions { force: true, ..Default::default() };
        let _ = docker.remove_image(&self.local_tag, Some(options), None).await;
    }
}

/// Splits a task's log into the step's own lines and the files it gives back.
#[derive(Default)]
pub struct Receiver {
    nonce: String,
    files: Vec<Returned>,
    current: Option<Returned>,
    complete: bool,
}

struct Returned {
    path: String,
    executable: bool,
    base64: String,
}

impl Receiver {
    /// Takes a line of the task's log; answers it back when it is the step's own.
    pub fn take<'a>(&mut self, stream: Stream, line: &'a str) -> Option<&'a str> {
        if self.expects_nothing() {
            return Some(line);
        }
        let marker = line.strip_prefix("::pipe-ship:").and_then(|rest| rest.strip_prefix(self.nonce.as_str()));
        match (stream, marker) {
            (Stream::Stdout, Some(rest)) => {
                self.files.extend(self.current.take());
                if let Some(file) = rest.strip_prefix(":file ") {
                    let (mode, path) = file.split_once(' ').unwrap_or(("644", file));
                    self.current =
                        Some(Returned { path: path.to_string(), executable: mode == "755", base64: String::new() });
                } else if rest == ":end" {
                    self.complete = true;
                }
                None
            }
            (Stream::Stdout, None) if self.current.is_some() && !self.complete => {
                if let Some(f) = self.current.as_mut() {
                    f.base64.push_str(line.trim());
                }
                None
            }
            _ => Some(line),
        }
    }

    /// Without a shipment nothing comes back.
    pub fn expects_nothing(&self) -> bool {
        self.nonce.is_empty()
    }

    /// Writes the files back: workspace files into the pipeline's directory,
    /// outputs where the run keeps them. Answers how many.
    pub fn unpack(mut self, spec: &ContainerRun) -> Result<usize, String> {
        if !self.complete {
            return Err("the step's changes did not come back (its log ended early)".into());
        }
        self.files.extend(self.current.take());
        let roots = [(&WORKSPACE[1..], &spec.workspace), (&OUTPUTS[1..], &spec.outputs)];
        for file in &self.files {
            let target = roots
                .iter()
                .find_map(|(prefix, root)| {
                    let rel = file.path.strip_prefix(prefix)?.strip_prefix('/')?;
                    inside(root, rel)
                })
                .ok_or_else(|| format!("the step gave back `{}`, which is outside the workspace", file.path))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&file.base64)
                .map_err(|e| format!("`{}` came back damaged: {e}", file.path))?;
            write(&target, &bytes, file.executable).map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        }
        Ok(self.files.len())
    }
}

/// `root/rel` when `rel` is plain names only and no directory on the way is a
/// symlink: nothing a step gives back is written outside `root`.
fn inside(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let mut dir = root.to_path_buf();
    let parents: Vec<_> = rel.parent().map(|p| p.components().collect()).unwrap_or_default();
    for c in parents {
        dir.push(c);
        if dir.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            return None;
        }
    }
    Some(root.join(rel))
}

fn write(target: &Path, bytes: &[u8], executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A symlink in the workspace is replaced, never written through.
    if target.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(target)?;
    }
    std::fs::write(target, bytes)?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(if executable { 0o755 } else { 0o644 }))
}

/// The build context: under `root/` the workspace, an empty outputs directory
/// and the mark where they go in the container, and a Dockerfile that copies
/// them over `base` in one step (one layer).
fn context(dir: &Path, base: &str, user: Option<&str>) -> Result<Vec<u8>, String> {
    // `.pipe/` (runs, logs, the cache) stays home, whatever `.pipeignore` says.
    let rules = DockerIgnore::read(&dir.join(".pipeignore"), "")?.exclude(".pipe")?;
    let mut archive = tar::Builder::new(Vec::new());
    let into = Path::new("root").join(&WORKSPACE[1..]);
    rules.tar(dir, &into, &mut archive).map_err(|e| format!("the shipped workspace: {e}"))?;
    let chown = user.map(|u| format!("--chown={u} ")).unwrap_or_default();
    let dockerfile = format!("FROM {base}\nCOPY {chown}root/ /\n");
    let shipped = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default() - Duration::from_secs(2);
    let mut add = |name: &str, bytes: &[u8], kind: tar::EntryType, mtime: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(bytes.len() as u64);
        header.set_mode(if kind == tar::EntryType::Directory { 0o777 } else { 0o644 });
        header.set_mtime(mtime);
        archive.append_data(&mut header, name, bytes)
    };
    let now = shipped.as_secs() + 2;
    let (workspace, outputs, mark) = (format!("root{WORKSPACE}/"), format!("root{OUTPUTS}/"), format!("root{MARK}"));
    add(&workspace, b"", tar::EntryType::Directory, now)
        .and_then(|()| add(&outputs, b"", tar::EntryType::Directory, now))
        .and_then(|()| add(&mark, b"", tar::EntryType::Regular, shipped.as_secs()))
        .and_then(|()| add(DOCKERFILE, dockerfile.as_bytes(), tar::EntryType::Regular, now))
        .map_err(|e| format!("cannot write the shipped workspace: {e}"))?;
    archive.into_inner().map_err(|e| format!("cannot write the shipped workspace: {e}"))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_keeps_its_lines_and_the_files_come_out_of_the_log() {
        let mut r = Receiver { nonce: "abc".into(), ..Default::default() };
        let mut kept = Vec::new();
        for (s, l) in [
            (Stream::Stdout, "building"),
            (Stream::Stdout, "::pipe-ship:wrong:file 644 workspace/x"),
            (Stream::Stdout, "::pipe-ship:abc:file 755 workspace/bin/tool"),
            (Stream::Stdout, "aGVsbG8K"),
            (Stream::Stderr, "a warning"),
            (Stream::Stdout, "::pipe-ship:abc:file 644 pipe/outputs/step"),
            (Stream::Stdout, "dmVyc2lvbj0xCg=="),
            (Stream::Stdout, "::pipe-ship:abc:end"),
        ] {
            kept.extend(r.take(s, l).map(str::to_string));
        }
        assert_eq!(kept, ["building", "::pipe-ship:wrong:file 644 workspace/x", "a warning"]);
        let dir = tempfile::tempdir().expect("dir");
        let spec = ContainerRun { workspace: dir.path().join("ws"), outputs: dir.path().join("out"), ..test_run() };
        assert_eq!(r.unpack(&spec), Ok(2));
        assert_eq!(std::fs::read_to_string(dir.path().join("ws/bin/tool")).expect("tool"), "hello\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("out/step")).expect("out"), "version=1\n");
    }

    #[test]
    fn nothing_is_written_outside_the_workspace() {
        let dir = tempfile::tempdir().expect("dir");
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).expect("symlink");
        assert!(inside(dir.path(), "../escape").is_none());
        assert!(inside(dir.path(), "link/passwd").is_none());
        assert!(inside(dir.path(), "a/b").is_some());
        let mut r = Receiver { nonce: "n".into(), ..Default::default() };
        for l in ["::pipe-ship:n:file 644 workspace/../../x", "eAo=", "::pipe-ship:n:end"] {
            r.take(Stream::Stdout, l);
        }
        let spec = ContainerRun { workspace: dir.path().to_path_buf(), ..test_run() };
        assert!(r.unpack(&spec).is_err_and(|e| e.contains("outside the workspace")));
    }

    #[test]
    fn a_log_that_ends_early_is_an_error_not_a_silent_loss() {
        let mut r = Receiver { nonce: "n".into(), ..Default::default() };
        r.take(Stream::Stdout, "::pipe-ship:n:file 644 workspace/x");
        assert!(r.unpack(&test_run()).is_err());
    }

    fn test_run() -> ContainerRun {
        ContainerRun {
            name: "s".into(),
            image: "i".into(),
            pull: crate::lang::model::PullPolicy::Never,
            cmd: Vec::new(),
            env: Vec::new(),
            user: None,
            memory: None,
            cpus: None,
            network: None,
            workspace: PathBuf::new(),
            outputs: PathBuf::new(),
            workdir: String::new(),
            labels: Default::default(),
            placement: Vec::new(),
            registry: None,
        }
    }
}
