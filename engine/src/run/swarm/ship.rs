//! The workspace on a multi-node swarm: bind mounts do not cross nodes, so a
//! step that may land anywhere gets its workspace as an image layer and gives
//! its changes back through its log.
//!
//! Out: the pipeline's directory (less `.pipe/`, every `.git`, the secrets
//! files and what `.pipeignore` excludes) becomes a layer on top of the step's image, pushed to the swarm's registry
//! and run by digest, so whichever node runs the task pulls exactly it. Unchanged
//! workspaces reuse the engine's build cache and the registry's layers.
//!
//! Back: after the step's command, the wrapper (`wrapper.sh`) kills what is left
//! of the step and prints every file under `/workspace` and `/pipe/outputs`
//! newer than the shipped layer, base64-encoded, as the block that ends the log
//! (`channel`: why the step cannot forge it). The log stream reaches pipe from
//! any node through the manager; pipe checks and writes the files back
//! (`unpack`). A step's image needs `sh`, `find` and `base64` (busybox, Debian
//! and Alpine images have them). Deleted files are not carried back.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, RemoveImageOptions};
use tokio_util::sync::CancellationToken;

use super::channel::{Limits, Receiver};
use crate::docker::{self, DockerError, DockerIgnore};
use crate::run::container::{ContainerRun, OUTPUTS, WORKSPACE};
use crate::step::StepLog;

/// Run by `sh -c` as PID 1 of the task's container; see `channel` for why.
const WRAPPER: &str = include_str!("wrapper.sh");

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
        let private = spec.private.clone();
        let context = tokio::task::spawn_blocking(move || context(&dir, &private, &base, user.as_deref()))
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

    /// The step's command inside the wrapper that carries its changes back.
    pub fn command(&self, cmd: &[String]) -> Vec<String> {
        let script = WRAPPER.replace("@NONCE@", &self.nonce);
        ["sh".to_string(), "-c".into(), script, "pipe-step".into()].into_iter().chain(cmd.iter().cloned()).collect()
    }

    pub fn receiver(&self) -> Receiver {
        Receiver::new(self.nonce.clone(), Limits::from_env())
    }

    /// Removes the local tag (the registry keeps the layers, shared by later steps).
    pub async fn discard(self, docker: &Docker) {
        let _turn = ENGINE.lock().await;
        let options = RemoveImageOptions { force: true, ..Default::default() };
        let _ = docker.remove_image(&self.local_tag, Some(options), None).await;
    }
}

/// The build context: under `root/` the workspace, an empty outputs directory
/// and the mark where they go in the container, and a Dockerfile that copies
/// them over `base` in one step (one layer).
fn context(dir: &Path, private: &[std::path::PathBuf], base: &str, user: Option<&str>) -> Result<Vec<u8>, String> {
    let rules = shipped(dir, private)?;
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

/// What of `dir` is shipped: `.pipeignore`'s choice, less what always stays
/// home whatever it says (its `!` lines included): `.pipe/` (runs, logs, the
/// cache, approvals), every `.git` (hooks, config, history, credentials in
/// remotes) and pipe's private files (the state root, secrets files).
fn shipped(dir: &Path, private: &[std::path::PathBuf]) -> Result<DockerIgnore, String> {
    let mut rules = DockerIgnore::read(&dir.join(".pipeignore"), "")?.exclude(".pipe")?.exclude("**/.git")?;
    let root = crate::plugin::grants::absolute(dir);
    for p in private {
        if let Ok(rel) = crate::plugin::grants::absolute(p).strip_prefix(&root) {
            rules = rules.exclude_path(rel);
        }
    }
    Ok(rules)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_pipe_and_secrets_files_are_never_shipped() {
        let dir = tempfile::tempdir().expect("dir");
        let ws = dir.path();
        for f in [".git/hooks/pre-commit", "vendor/lib/.git", ".pipe/approvals/a", ".secrets.env", "src/main.c"] {
            let path = ws.join(f);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, "x").expect("write");
        }
        // `!` lines cannot bring them back.
        std::fs::write(ws.join(".pipeignore"), "!.git\n!.secrets.env\n!.pipe\n").expect("pipeignore");
        let private = [ws.join(".pipe"), ws.join(".secrets.env")];
        let tar = context(ws, &private, "base", None).expect("context");
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path().expect("path").display().to_string())
            .filter(|n| n.starts_with("root/workspace/"))
            .collect();
        assert!(names.iter().any(|n| n == "root/workspace/src/main.c"), "{names:?}");
        for n in &names {
            assert!(!n.contains(".git") && !n.contains(".secrets.env") && !n.contains(".pipe/"), "shipped {n}");
        }
    }
}
