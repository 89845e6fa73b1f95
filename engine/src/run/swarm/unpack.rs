//! Writing back what a shipped step gave: every path is checked as hostile
//! (the step's image, its `sh`, `find` and `base64` included, are the
//! pipeline's, not pipe's), every byte counted against `Limits`, every file
//! streamed to a temporary file beside its destination and renamed into place
//! only once the whole block has been read: an error leaves nothing half-written.

use std::io::{BufRead, Write};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;

use super::channel::{Block, Limits, Line, State};
use crate::run::container::{ContainerRun, OUTPUTS, WORKSPACE};

/// Where the files of a step's block may go.
pub struct Destination {
    workspace: PathBuf,
    outputs: PathBuf,
    /// The step's own files in `outputs` (`$PIPE_OUTPUT` and its details).
    output_names: Vec<String>,
    /// pipe's own files (the state root, secrets files), resolved: never written.
    private: Vec<PathBuf>,
    /// Where git runs hooks from, when `core.hooksPath` puts it in the workspace.
    hooks: Option<PathBuf>,
}

/// What becomes of one file of the block.
#[derive(Debug, PartialEq, Eq)]
pub enum Place {
    Write(PathBuf),
    /// Not taken back, and why: a rule, not an error of the step.
    Refuse(&'static str),
}

/// What `unpack` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub written: usize,
    /// Paths as the step gave them, and why each stayed out.
    pub refused: Vec<(String, &'static str)>,
}

impl Destination {
    pub fn for_step(spec: &ContainerRun) -> Destination {
        let output = spec.env.iter().find(|(k, _)| k == "PIPE_OUTPUT").map(|(_, v)| Path::new(v));
        let output_names = output
            .into_iter()
            .flat_map(|o| [o.to_path_buf(), crate::step::outputs::details_path(o)])
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let workspace = crate::plugin::grants::absolute(&spec.workspace);
        Destination {
            hooks: hooks_dir(&workspace),
            workspace,
            outputs: spec.outputs.clone(),
            output_names,
            private: spec.private.iter().map(|p| crate::plugin::grants::absolute(p)).collect(),
        }
    }

    /// Where `shipped` (`workspace/…` or `pipe/outputs/…`, as the wrapper
    /// prints it) goes; an error when it would leave the workspace.
    pub fn place(&self, shipped: &str) -> Result<Place, String> {
        let outside = || format!("the step gave back `{}`, which is outside the workspace", shipped.escape_debug());
        if let Some(name) = shipped.strip_prefix(&OUTPUTS[1..]).and_then(|r| r.strip_prefix('/')) {
            let names = plain(name).ok_or_else(outside)?;
            if names.len() != 1 || !self.output_names.iter().any(|n| n == name) {
                return Ok(Place::Refuse("only the step's own outputs file comes back to pipe/outputs"));
            }
            return inside(&self.outputs, name).map(Place::Write).ok_or_else(outside);
        }
        let rel = shipped.strip_prefix(&WORKSPACE[1..]).and_then(|r| r.strip_prefix('/')).ok_or_else(outside)?;
        let names = plain(rel).ok_or_else(outside)?;
        if names.contains(&".git") {
            return Ok(Place::Refuse("git's own files (`.git` at any depth) never come back"));
        }
        if names.contains(&".pipe") {
            return Ok(Place::Refuse("pipe's own files (`.pipe` at any depth) never come back"));
        }
        let lexical = self.workspace.join(rel);
        if self.hooks.as_ref().is_some_and(|h| lexical.starts_with(h)) {
            return Ok(Place::Refuse("git runs hooks from there (`core.hooksPath`)"));
        }
        if self.private.iter().any(|p| lexical.starts_with(p) || p.starts_with(&lexical)) {
            return Ok(Place::Refuse("pipe's state and secrets files never come back"));
        }
        inside(&self.workspace, rel).map(Place::Write).ok_or_else(outside)
    }
}

/// The directory git runs hooks from for the repository holding `workspace`
/// (`core.hooksPath`, e.g. husky's `.husky/_`), resolved; `None` outside a
/// repository. `rev-parse` runs no hook and no fsmonitor.
fn hooks_dir(workspace: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(workspace)
        .args(["rev-parse", "--path-format=absolute", "--git-path", "hooks"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !path.trim().is_empty()).then(|| crate::plugin::grants::absolute(Path::new(path.trim())))
}

/// The names of `rel` when it is relative and normalized: no empty, `.` or
/// `..` part, no leading `/`.
fn plain(rel: &str) -> Option<Vec<&str>> {
    let names: Vec<&str> = rel.split('/').collect();
    names.iter().all(|n| !n.is_empty() && *n != "." && *n != ".." && !n.contains('\0')).then_some(names)
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

/// One file of the block, being decoded.
struct Current {
    shipped: String,
    executable: bool,
    /// Its temporary file beside the destination; `None` when refused.
    temp: Option<(tempfile::NamedTempFile, PathBuf)>,
    bytes: u64,
    /// Base64 not decoded yet (less than 4 characters).
    carry: String,
}

/// Writes the block's files where `dest` says; all of them or none.
pub fn unpack(block: Block, dest: &Destination) -> Result<Unpacked, String> {
    let Block { nonce, limits, lines } = block;
    let mut staged: Vec<(tempfile::TempPath, PathBuf)> = Vec::new();
    let (mut done, mut current, mut total, mut state) = (Unpacked::default(), None, 0u64, State::Start);
    for line in lines.lines() {
        let line = line.map_err(|e| format!("cannot read the file-back spool: {e}"))?;
        let read = Line::read(&nonce, &line);
        state = state.next(&read).ok_or("the step's file-back is malformed")?;
        match read {
            Line::File { executable, path } => {
                staged.extend(close(current.take())?);
                current = Some(open(dest, path, executable, &mut done)?);
            }
            Line::Data(data) => {
                if let Some(file) = current.as_mut() {
                    feed(file, data, &mut total, limits)?;
                }
            }
            Line::End => staged.extend(close(current.take())?),
            Line::Begin | Line::Text => {}
        }
    }
    if state != State::Ended {
        return Err("the step's file-back is incomplete".into());
    }
    // Checked again at the last moment: a directory on the way may have
    // become a symlink while the block was read.
    for (_, target) in &staged {
        let ok = target.parent().is_some_and(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()));
        if !ok || target.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            return Err(format!("cannot write {}: its directory changed or a directory is there", target.display()));
        }
    }
    for (temp, target) in staged {
        temp.persist(&target).map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        done.written += 1;
    }
    Ok(done)
}

fn open(dest: &Destination, shipped: &str, executable: bool, done: &mut Unpacked) -> Result<Current, String> {
    let temp = match dest.place(shipped)? {
        Place::Refuse(why) => {
            done.refused.push((shipped.to_string(), why));
            None
        }
        Place::Write(target) => {
            let dir = target.parent().ok_or_else(|| format!("cannot write {}", target.display()))?;
            if target.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                return Err(format!("cannot write {}: a directory is there", target.display()));
            }
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let file = tempfile::Builder::new()
                .prefix(".pipe-ship-")
                .tempfile_in(dir)
                .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
            Some((file, target))
        }
    };
    Ok(Current { shipped: shipped.to_string(), executable, temp, bytes: 0, carry: String::new() })
}

fn feed(file: &mut Current, data: &str, total: &mut u64, limits: Limits) -> Result<(), String> {
    file.carry.push_str(data);
    let whole = file.carry.len() / 4 * 4;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&file.carry[..whole])
        .map_err(|e| format!("`{}` came back damaged: {e}", file.shipped.escape_debug()))?;
    file.carry.drain(..whole);
    file.bytes += bytes.len() as u64;
    *total += bytes.len() as u64;
    if file.bytes > limits.per_file {
        return Err(format!(
            "`{}` is larger than {}, the bound on one file a swarm step gives back: nothing was written",
            file.shipped.escape_debug(),
            bytesize::ByteSize::b(limits.per_file)
        ));
    }
    if *total > limits.total {
        return Err(format!(
            "the step gave back more than {}, the bound on what a swarm step gives back \
             (PIPE_SWARM_RETURN_MAX): nothing was written",
            bytesize::ByteSize::b(limits.total)
        ));
    }
    if let Some((temp, target)) = file.temp.as_mut() {
        temp.write_all(&bytes).map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    }
    Ok(())
}

/// The file, complete, ready to be renamed into place.
fn close(file: Option<Current>) -> Result<Option<(tempfile::TempPath, PathBuf)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(file) = file else { return Ok(None) };
    if !file.carry.is_empty() {
        return Err(format!("`{}` came back damaged: its base64 is cut short", file.shipped.escape_debug()));
    }
    let Some((temp, target)) = file.temp else { return Ok(None) };
    // Plain modes only: no setuid, setgid or sticky bit, whatever the step set.
    let mode = if file.executable { 0o755 } else { 0o644 };
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    Ok(Some((temp.into_temp_path(), target)))
}
