//! The file-back channel: how the files a shipped step changed travel back in
//! its log, and how pipe tells them from what the step printed.
//!
//! The wrapper (`wrapper.sh`, PID 1 of the task's container) runs the step,
//! kills every other process of the container and waits until none is alive,
//! then prints, on stdout, a newline and the block:
//!
//! ```text
//! ::pipe-ship:NONCE:begin
//! ::pipe-ship:NONCE:file 644 workspace/dist/app
//! <base64 lines>
//! ::pipe-ship:NONCE:end
//! ```
//!
//! Why a step cannot forge it, although it can read the nonce
//! (`/proc/1/cmdline`): once the wrapper prints `begin`, no process of the step
//! is left to write, and a pipe keeps the order of its writes, so the genuine
//! block is the last `begin` of the stdout stream and runs to its end. pipe
//! accepts only that: the last `begin` on stdout, followed by well-formed lines
//! only, the last of which is `end`. Anything the step printed before (fake
//! blocks, fake early ends, fake files) precedes that `begin` and is plain log
//! text. Markers on stderr are never read: Docker multiplexes the two streams
//! without a common order, and the wrapper writes the block to stdout only.
//! Inside the genuine block no line can be a `begin` (headers start with
//! `file`, data is base64, names with a newline are skipped).
//!
//! The lines after the last `begin` are held in a spool file, bounded, not in
//! memory: a later `begin` shows that they were the step's own text, and they
//! go to the log then. What the block carries is written by `unpack`.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, Write};

use crate::event::Stream;

/// Where a step's lines go: its log.
pub type Emit<'a> = dyn FnMut(Stream, &str) + 'a;

/// A line of the task's stdout, as the channel reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Begin,
    File {
        executable: bool,
        path: &'a str,
    },
    Data(&'a str),
    End,
    /// Anything else: inside a block, it makes the block malformed.
    Text,
}

impl<'a> Line<'a> {
    /// What `line` is, for the block marked with `nonce`.
    pub fn read(nonce: &str, line: &'a str) -> Line<'a> {
        let marker = line.strip_prefix("::pipe-ship:").and_then(|rest| rest.strip_prefix(nonce));
        match marker {
            Some(":begin") => Line::Begin,
            Some(":end") => Line::End,
            Some(rest) => match rest.strip_prefix(":file ").and_then(|f| f.split_once(' ')) {
                Some(("644", path)) if !path.is_empty() => Line::File { executable: false, path },
                Some(("755", path)) if !path.is_empty() => Line::File { executable: true, path },
                _ => Line::Text,
            },
            None if !line.is_empty() && line.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) => {
                Line::Data(line)
            }
            None => Line::Text,
        }
    }
}

/// What a step may give back: per file and in all (decoded bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_file: u64,
    pub total: u64,
}

impl Limits {
    const PER_FILE: u64 = 256 << 20;
    const TOTAL: u64 = 1 << 30;

    /// The defaults, or `PIPE_SWARM_RETURN_MAX` (bytes, in all; one file is
    /// bounded by the smaller of it and the default per file).
    pub fn from_env() -> Limits {
        let total = std::env::var("PIPE_SWARM_RETURN_MAX")
            .ok()
            .and_then(|v| v.trim().parse::<bytesize::ByteSize>().ok())
            .map_or(Limits::TOTAL, |b| b.as_u64());
        Limits { per_file: Limits::PER_FILE.min(total), total }
    }

    /// The spool holds base64 (4 bytes per 3) and headers: twice the decoded
    /// bound and some room for names is more than a genuine block needs.
    fn spool(&self) -> u64 {
        self.total.saturating_mul(2).saturating_add(8 << 20)
    }
}

/// Splits a task's log into the step's own lines and the block that ends it.
#[derive(Default)]
pub struct Receiver {
    nonce: String,
    limits: Option<Limits>,
    /// An empty stdout line not shown yet: the one the wrapper prints before
    /// `begin` is not the step's.
    blank: bool,
    /// The stdout lines from the last `begin` on.
    held: Option<Held>,
}

struct Held {
    spool: Result<File, String>,
    bytes: u64,
    /// Lines not spooled once the spool was full.
    dropped: u64,
}

impl Receiver {
    pub fn new(nonce: String, limits: Limits) -> Receiver {
        Receiver { nonce, limits: Some(limits), ..Default::default() }
    }

    /// Takes a line of the task's log; the step's own lines go to `emit`.
    pub fn take(&mut self, stream: Stream, line: &str, emit: &mut Emit<'_>) {
        let Some(limits) = self.limits else { return emit(stream, line) };
        if stream != Stream::Stdout {
            return emit(stream, line);
        }
        if Line::read(&self.nonce, line) == Line::Begin {
            // Whatever came since the previous `begin` was the step's text.
            self.release(emit);
            self.blank = false;
            let spool = tempfile::tempfile().map_err(|e| format!("cannot make a spool file for the file-back: {e}"));
            self.held = Some(Held { spool, bytes: 0, dropped: 0 });
        }
        match self.held.as_mut() {
            Some(held) => held.push(line, limits.spool()),
            None => {
                if std::mem::take(&mut self.blank) {
                    emit(Stream::Stdout, "");
                }
                if line.is_empty() {
                    self.blank = true;
                } else {
                    emit(Stream::Stdout, line);
                }
            }
        }
    }

    /// The end of the log: the block that ends stdout, for `unpack`, or why
    /// there is none (its lines, if any, go to the log as the step's).
    pub fn finish(mut self, emit: &mut Emit<'_>) -> Result<Block, String> {
        let lost = || "the step's changes did not come back: its log does not end with pipe's file-back".to_string();
        let (Some(limits), Some(held)) = (self.limits, self.held.take()) else {
            if self.blank {
                emit(Stream::Stdout, "");
            }
            return Err(lost());
        };
        if held.dropped > 0 {
            return Err(format!(
                "the step gave back more than {} (at most {} come back from a swarm step)",
                bytesize::ByteSize::b(limits.spool()),
                bytesize::ByteSize::b(limits.total)
            ));
        }
        let mut spool = held.spool?;
        spool.rewind().map_err(|e| format!("cannot read the file-back spool: {e}"))?;
        if !well_formed(&self.nonce, &mut spool)? {
            self.held = Some(Held { spool: Ok(spool), ..held });
            self.release(emit);
            if self.blank {
                emit(Stream::Stdout, "");
            }
            return Err(lost());
        }
        spool.rewind().map_err(|e| format!("cannot read the file-back spool: {e}"))?;
        Ok(Block { nonce: self.nonce, limits, lines: BufReader::new(spool) })
    }

    /// The held lines go to the log as the step's own text.
    fn release(&mut self, emit: &mut Emit<'_>) {
        let Some(held) = self.held.take() else { return };
        if let Ok(mut spool) = held.spool
            && spool.rewind().is_ok()
        {
            for line in BufReader::new(spool).lines().map_while(Result::ok) {
                // The last blank one may be the wrapper's, before its `begin`.
                if std::mem::replace(&mut self.blank, line.is_empty()) {
                    emit(Stream::Stdout, "");
                }
                if !line.is_empty() {
                    emit(Stream::Stdout, &line);
                }
            }
        }
        if held.dropped > 0 {
            emit(Stream::Stdout, &format!("[pipe: {} more lines of the step not shown]", held.dropped));
        }
    }
}

impl Held {
    fn push(&mut self, line: &str, cap: u64) {
        let size = line.len() as u64 + 1;
        if self.dropped > 0 || self.bytes + size > cap {
            self.dropped += 1;
            return;
        }
        self.bytes += size;
        if let Ok(spool) = self.spool.as_mut()
            && let Err(e) = spool.write_all(line.as_bytes()).and_then(|()| spool.write_all(b"\n"))
        {
            self.spool = Err(format!("cannot write the file-back spool: {e}"));
        }
    }
}

/// Where a block's reading stands; `next` is its grammar: `begin`, then file
/// headers each followed by data lines, then `end` as the very last line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Start,
    Open,
    InFile,
    Ended,
}

impl State {
    /// The state after `line`; `None` when the block is malformed there.
    pub fn next(self, line: &Line<'_>) -> Option<State> {
        match (self, line) {
            (State::Start, Line::Begin) => Some(State::Open),
            (State::Open | State::InFile, Line::File { .. }) => Some(State::InFile),
            (State::InFile, Line::Data(_)) => Some(State::InFile),
            (State::Open | State::InFile, Line::End) => Some(State::Ended),
            _ => None,
        }
    }
}

/// Whether the spooled lines are a well-formed block.
fn well_formed(nonce: &str, spool: &mut File) -> Result<bool, String> {
    let mut state = State::Start;
    for line in BufReader::new(spool).lines() {
        let line = line.map_err(|e| format!("cannot read the file-back spool: {e}"))?;
        match state.next(&Line::read(nonce, &line)) {
            Some(next) => state = next,
            None => return Ok(false),
        }
    }
    Ok(state == State::Ended)
}

/// The block that ended the log, spooled: read line by line by `unpack`.
pub struct Block {
    pub nonce: String,
    pub limits: Limits,
    pub lines: BufReader<File>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::run::container::ContainerRun;
    use crate::run::swarm::unpack::{Destination, Place, unpack};

    const O: Stream = Stream::Stdout;
    const E: Stream = Stream::Stderr;
    const BEGIN: &str = "::pipe-ship:n:begin";
    const END: &str = "::pipe-ship:n:end";
    const HELLO: &str = "aGVsbG8K";
    const X: &str = "eAo=";
    /// A case: its name, the task's log, the lines the step keeps, the files that come back.
    type Case<'a> = (&'a str, Vec<(Stream, &'a str)>, Vec<&'a str>, &'a [(&'a str, u32, &'a str)]);
    /// A case that fails: its name, the task's log, the error.
    type Failing<'a> = (&'a str, Vec<(Stream, &'a str)>, &'a str);
    const ROOMY: Limits = Limits { per_file: 1 << 20, total: 1 << 20 };

    fn file(mode: &str, path: &str) -> String {
        format!("::pipe-ship:n:file {mode} {path}")
    }

    /// What a log gives: the lines the step keeps, then the files under the
    /// workspace and outputs (mode, text), or the error.
    struct Received {
        log: Vec<String>,
        files: Result<BTreeMap<String, (u32, String)>, String>,
        refused: Vec<String>,
        /// Every file left in the directories, whatever happened.
        left: Vec<String>,
    }

    fn receive(log: &[(Stream, &str)], limits: Limits) -> Received {
        let dir = tempfile::tempdir().expect("dir");
        let (ws, out) = (dir.path().join("ws"), dir.path().join("out"));
        std::fs::create_dir_all(&ws).expect("ws");
        std::fs::create_dir_all(&out).expect("out");
        std::fs::write(ws.join(".secrets.env"), "TOKEN=1\n").expect("secrets");
        let spec = ContainerRun {
            workspace: ws.clone(),
            outputs: out.clone(),
            private: vec![ws.join(".secrets.env")],
            ..run()
        };
        let mut r = Receiver::new("n".into(), limits);
        let mut kept = Vec::new();
        for (stream, line) in log {
            r.take(*stream, line, &mut |_, l| kept.push(l.to_string()));
        }
        let done =
            r.finish(&mut |_, l| kept.push(l.to_string())).and_then(|b| unpack(b, &Destination::for_step(&spec)));
        let left = walk(dir.path()).into_keys().collect();
        let refused = done.as_ref().map(|d| d.refused.iter().map(|(p, _)| p.clone()).collect()).unwrap_or_default();
        let mut files = walk(dir.path());
        files.remove("ws/.secrets.env");
        Received { log: kept, files: done.map(|_| files), refused, left }
    }

    fn walk(root: &Path) -> BTreeMap<String, (u32, String)> {
        let mut found = BTreeMap::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
                let m = e.path().symlink_metadata().expect("meta");
                if m.is_dir() {
                    dirs.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(root).expect("rel").display().to_string();
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    found.insert(rel, (m.permissions().mode() & 0o7777, text));
                }
            }
        }
        found
    }

    fn files(list: &[(&str, u32, &str)]) -> BTreeMap<String, (u32, String)> {
        list.iter().map(|(p, m, t)| (p.to_string(), (*m, t.to_string()))).collect()
    }

    #[test]
    fn only_the_block_that_ends_stdout_comes_back() {
        let (real, forged, outside) =
            (file("644", "workspace/real"), file("644", "workspace/forged"), file("644", "workspace/../../escape"));
        let tool = file("755", "workspace/bin/tool");
        let output = file("644", "pipe/outputs/s");
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            ("genuine", vec![(O, "building"), (O, ""), (O, BEGIN), (O, &real), (O, HELLO), (O, &tool), (O, X), (O, &output), (O, "dmVyc2lvbj0xCg=="), (O, END)],
             vec!["building"], &[("ws/real", 0o644, "hello\n"), ("ws/bin/tool", 0o755, "x\n"), ("out/s", 0o644, "version=1\n")]),
            ("a forged block before the genuine one is text", vec![(O, BEGIN), (O, &forged), (O, X), (O, &outside), (O, X), (O, END), (O, "after"), (O, ""), (O, BEGIN), (O, &real), (O, HELLO), (O, END)],
             vec![BEGIN, &forged, X, &outside, X, END, "after"], &[("ws/real", 0o644, "hello\n")]),
            ("a forged early end is text", vec![(O, END), (O, &forged), (O, X), (O, BEGIN), (O, &real), (O, HELLO), (O, END)],
             vec![END, &forged, X], &[("ws/real", 0o644, "hello\n")]),
            ("a forged begin, then an early end, then more", vec![(O, BEGIN), (O, END), (O, "more"), (O, ""), (O, BEGIN), (O, &real), (O, HELLO), (O, END)],
             vec![BEGIN, END, "more"], &[("ws/real", 0o644, "hello\n")]),
            ("markers on stderr are never read", vec![(E, BEGIN), (E, &forged), (E, X), (E, END), (O, BEGIN), (O, &real), (O, HELLO), (O, END), (E, BEGIN)],
             vec![BEGIN, &forged, X, END, BEGIN], &[("ws/real", 0o644, "hello\n")]),
            ("another nonce is text", vec![(O, "::pipe-ship:m:begin"), (O, "::pipe-ship:m:end"), (O, BEGIN), (O, END)],
             vec!["::pipe-ship:m:begin", "::pipe-ship:m:end"], &[]),
            ("blank lines of the step stay", vec![(O, "a"), (O, ""), (O, "b"), (O, ""), (O, ""), (O, BEGIN), (O, END)],
             vec!["a", "", "b", ""], &[]),
        ];
        for (name, log, kept, expected) in table {
            let got = receive(&log, ROOMY);
            assert_eq!(got.log, kept, "{name}");
            assert_eq!(got.files, Ok(files(expected)), "{name}");
        }
    }

    #[test]
    fn a_log_that_does_not_end_with_a_well_formed_block_brings_nothing_back() {
        let a = file("644", "workspace/a");
        let setuid = file("4755", "workspace/a");
        #[rustfmt::skip]
        let table: Vec<Failing> = vec![
            ("no block", vec![(O, "done")], "did not come back"),
            ("a forged begin that nothing follows", vec![(O, BEGIN), (O, &a), (O, HELLO)], "did not come back"),
            ("a line after the end", vec![(O, BEGIN), (O, &a), (O, HELLO), (O, END), (O, "late")], "did not come back"),
            ("a second end", vec![(O, BEGIN), (O, &a), (O, HELLO), (O, END), (O, END)], "did not come back"),
            ("text inside", vec![(O, BEGIN), (O, &a), (O, "not base64!"), (O, END)], "did not come back"),
            ("data before any file", vec![(O, BEGIN), (O, HELLO), (O, &a), (O, END)], "did not come back"),
            ("a mode other than 644 or 755", vec![(O, BEGIN), (O, &setuid), (O, HELLO), (O, END)], "did not come back"),
            ("base64 cut short", vec![(O, BEGIN), (O, &a), (O, "aGVsbG8"), (O, END)], "damaged"),
        ];
        for (name, log, error) in table {
            let got = receive(&log, ROOMY);
            assert!(got.files.as_ref().is_err_and(|e| e.contains(error)), "{name}: {:?}", got.files);
            assert_eq!(got.left, ["ws/.secrets.env"], "{name}: something was written");
        }
        // The held lines were the step's: they reach the log.
        let got = receive(&[(O, BEGIN), (O, &a), (O, HELLO), (O, END), (O, "late")], ROOMY);
        assert_eq!(got.log, [BEGIN, &a, HELLO, END, "late"]);
    }

    #[test]
    fn gits_and_pipes_own_files_never_come_back() {
        let hook = file("755", "workspace/.git/hooks/post-checkout");
        let approval = file("644", "workspace/.pipe/approvals/x.decision");
        let nested = file("644", "workspace/vendor/lib/.git/config");
        let secrets = file("644", "workspace/.secrets.env");
        let other = file("644", "pipe/outputs/other-step");
        let ok = file("644", "workspace/ok");
        let log = [
            (O, BEGIN),
            (O, &hook),
            (O, X),
            (O, &approval),
            (O, X),
            (O, &nested),
            (O, X),
            (O, &secrets),
            (O, X),
            (O, &other),
            (O, X),
            (O, &ok),
            (O, X),
            (O, END),
        ];
        let got = receive(&log, ROOMY);
        assert_eq!(got.files, Ok(files(&[("ws/ok", 0o644, "x\n")])));
        let refused =
            [".git/hooks/post-checkout", ".pipe/approvals/x.decision", "vendor/lib/.git/config", ".secrets.env"];
        let mut expected: Vec<String> = refused.iter().map(|p| format!("workspace/{p}")).collect();
        expected.push("pipe/outputs/other-step".into());
        assert_eq!(got.refused, expected);
    }

    #[test]
    fn paths_outside_the_workspace_fail_the_step() {
        for path in [
            "workspace/../../escape",
            "workspace//x",
            "workspace/./x",
            "/etc/passwd",
            "workspace",
            "etc/passwd",
            "pipe/outputs/../x",
        ] {
            let line = file("644", path);
            let got = receive(&[(O, BEGIN), (O, &line), (O, X), (O, END)], ROOMY);
            assert!(got.files.as_ref().is_err_and(|e| e.contains("outside the workspace")), "{path}: {:?}", got.files);
            assert_eq!(got.left, ["ws/.secrets.env"], "{path}");
        }
    }

    #[test]
    fn past_a_bound_the_step_fails_and_nothing_is_written() {
        let (a, b) = (file("644", "workspace/a"), file("644", "workspace/dir/b"));
        let log = [(O, BEGIN), (O, &a), (O, X), (O, &b), (O, HELLO), (O, END)];
        let got = receive(&log, Limits { per_file: 4, total: 100 });
        assert!(got.files.as_ref().is_err_and(|e| e.contains("larger than 4 B")), "{:?}", got.files);
        assert_eq!(got.left, ["ws/.secrets.env"], "a file or a temporary file was left");
        let got = receive(&log, Limits { per_file: 6, total: 7 });
        assert!(got.files.as_ref().is_err_and(|e| e.contains("more than 7 B")), "{:?}", got.files);
        assert_eq!(got.left, ["ws/.secrets.env"], "a file or a temporary file was left");
        assert!(Limits::from_env().per_file <= Limits::from_env().total);
    }

    #[test]
    fn a_hooks_path_in_the_workspace_is_as_closed_as_git_hooks() {
        let dir = tempfile::tempdir().expect("dir");
        let ws = dir.path();
        for args in [&["init", "-q"][..], &["config", "core.hooksPath", ".husky/_"]] {
            let ok = std::process::Command::new("git").arg("-C").arg(ws).args(args).status().expect("git");
            assert!(ok.success(), "git {args:?}");
        }
        let spec = ContainerRun { workspace: ws.to_path_buf(), ..run() };
        let dest = Destination::for_step(&spec);
        let refused = |p: &str| matches!(dest.place(p), Ok(Place::Refuse(_)));
        assert!(refused("workspace/.husky/_/post-checkout"));
        assert!(refused("workspace/.git/hooks/post-checkout"));
        assert!(!refused("workspace/.husky/post-checkout-notes.md"));
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        let dir = tempfile::tempdir().expect("dir");
        let (ws, elsewhere) = (dir.path().join("ws"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(&ws).expect("ws");
        std::fs::create_dir_all(&elsewhere).expect("elsewhere");
        std::fs::write(elsewhere.join("target"), "untouched").expect("target");
        std::os::unix::fs::symlink(&elsewhere, ws.join("linkdir")).expect("symlink");
        std::os::unix::fs::symlink(elsewhere.join("target"), ws.join("linkfile")).expect("symlink");
        let spec = ContainerRun { workspace: ws.clone(), ..run() };
        let bring = |path: &str| {
            let mut r = Receiver::new("n".into(), ROOMY);
            for line in [BEGIN, &file("644", path), X, END] {
                r.take(O, line, &mut |_, _| {});
            }
            r.finish(&mut |_, _| {}).and_then(|b| unpack(b, &Destination::for_step(&spec)))
        };
        assert!(bring("workspace/linkdir/target").is_err_and(|e| e.contains("outside the workspace")));
        // A symlink where the file goes is replaced, never written through.
        assert!(bring("workspace/linkfile").is_ok());
        assert_eq!(std::fs::read_to_string(elsewhere.join("target")).expect("target"), "untouched");
        assert_eq!(std::fs::read_to_string(ws.join("linkfile")).expect("file"), "x\n");
        assert!(!ws.join("linkfile").symlink_metadata().expect("meta").file_type().is_symlink());
    }

    fn run() -> ContainerRun {
        ContainerRun {
            name: "s".into(),
            image: "i".into(),
            pull: crate::lang::model::PullPolicy::Never,
            cmd: Vec::new(),
            env: vec![("PIPE_OUTPUT".into(), "/pipe/outputs/s".into())],
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
            private: Vec::new(),
        }
    }
}
