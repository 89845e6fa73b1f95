//! A step's log: masked lines go to `logs/<step>.log` (renamed into place when
//! the step ends), to the live event stream, and to a short tail for the summary.
//! The file is created at the first line: a silent step costs no file at all.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::mask::Masker;
use crate::event::{Event, Events, Stream};

/// Lines kept for the failure summary.
pub const TAIL_LINES: usize = 15;
/// Past this many bytes a step's log is cut, so a runaway step cannot fill the disk.
pub const MAX_LOG_BYTES: u64 = 64 << 20;
/// Longer lines are cut at this many bytes.
pub const MAX_LINE_BYTES: usize = 64 << 10;

#[derive(Clone)]
pub struct StepLog {
    step: Arc<str>,
    events: Events,
    masker: Masker,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    file: LogFile,
    partial: PathBuf,
    path: PathBuf,
    tail: VecDeque<String>,
    bytes: u64,
    truncated: bool,
}

enum LogFile {
    NotYet,
    Open(BufWriter<File>),
    /// Finished, or could not be created (the run goes on; the live view has the lines).
    Closed,
}

impl Inner {
    fn write(&mut self, line: &str) {
        if let LogFile::NotYet = self.file {
            self.file = match File::create(&self.partial) {
                Ok(f) => LogFile::Open(BufWriter::new(f)),
                Err(e) => {
                    tracing::warn!(path = %self.partial.display(), error = %e, "cannot create a step log");
                    LogFile::Closed
                }
            };
        }
        if let LogFile::Open(f) = &mut self.file {
            let _ = writeln!(f, "{line}");
        }
    }
}

impl StepLog {
    pub fn new(path: PathBuf, step: &str, events: Events, masker: Masker) -> StepLog {
        StepLog {
            step: step.into(),
            events,
            masker,
            inner: Arc::new(Mutex::new(Inner {
                file: LogFile::NotYet,
                partial: path.with_extension("log.partial"),
                path,
                tail: VecDeque::new(),
                bytes: 0,
                truncated: false,
            })),
        }
    }

    pub fn line(&self, stream: Stream, raw: &str) {
        if let Some(event) = self.record(stream, raw) {
            self.events.send(event);
        }
    }

    /// A line of a child's output: as [`Self::line`], but waits while the
    /// event queue is full, so that a flood of output is slowed, not held in memory.
    async fn output(&self, stream: Stream, raw: &str) {
        if let Some(event) = self.record(stream, raw) {
            let bytes = raw.len();
            self.events.send_output(event, bytes).await;
        }
    }

    /// Writes a line to the file and the tail; returns the event to send.
    fn record(&self, stream: Stream, raw: &str) -> Option<Event> {
        let line = self.masker.mask(raw);
        {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if inner.bytes > MAX_LOG_BYTES {
                if !inner.truncated {
                    inner.truncated = true;
                    let note = format!("[pipe] log cut at {MAX_LOG_BYTES} bytes");
                    inner.write(&note);
                    drop(inner);
                    return Some(Event::StepLog { step: self.step.to_string(), stream: Stream::Pipe, line: note });
                }
                return None;
            }
            inner.bytes += line.len() as u64 + 1;
            inner.write(&line);
            if inner.tail.len() == TAIL_LINES {
                inner.tail.pop_front();
            }
            inner.tail.push_back(line.clone());
        }
        Some(Event::StepLog { step: self.step.to_string(), stream, line })
    }

    /// Text from a source that must not be able to forge pipe's own output (a
    /// plugin): each line of it becomes a line of the log, with terminal escape
    /// sequences and other control characters removed and its length capped.
    pub fn untrusted(&self, stream: Stream, text: &str) {
        for line in text.split('\n') {
            let mut clean = sanitize(line);
            if clean.len() > MAX_LINE_BYTES {
                let mut cut = MAX_LINE_BYTES;
                while !clean.is_char_boundary(cut) {
                    cut -= 1;
                }
                clean.truncate(cut);
                clean.push_str(" [pipe: line cut]");
            }
            self.line(stream, &clean);
        }
    }

    /// What masks this log's secrets.
    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// A line from the engine itself (attempt markers, timeouts).
    /// Tells the run's listeners what the step waits for (none: it goes on).
    pub fn waiting(&self, what: Option<&str>) {
        self.events.send(crate::event::Event::StepWaiting {
            step: self.step.to_string(),
            waiting: what.map(|w| self.masker.mask(w)),
        });
    }

    pub fn note(&self, text: &str) {
        for (i, line) in text.lines().enumerate() {
            let lead = if i == 0 { "[pipe]" } else { "      " };
            self.line(Stream::Pipe, &format!("{lead} {line}"));
        }
    }

    /// Flushes the file, moves it into place, and returns the tail.
    pub fn finish(&self) -> Vec<String> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let LogFile::Open(mut f) = std::mem::replace(&mut inner.file, LogFile::Closed) {
            let _ = f.flush();
            drop(f);
            let _ = std::fs::rename(&inner.partial, &inner.path);
        }
        inner.tail.iter().cloned().collect()
    }

    /// A log that keeps nothing (a plugin describing itself has nothing to say).
    pub fn sink(step: &str) -> StepLog {
        let (events, _) = Events::channel();
        let log = StepLog::new(PathBuf::new(), step, events, Masker::default());
        log.inner.lock().unwrap_or_else(PoisonError::into_inner).file = LogFile::Closed;
        log
    }

    /// Copies a child's stream into the log, line by line, until it closes.
    /// A line longer than [`MAX_LINE_BYTES`] is cut there, and says so.
    pub async fn pump(self, reader: impl AsyncRead + Unpin, stream: Stream) {
        let mut r = BufReader::new(reader);
        let mut line: Vec<u8> = Vec::new();
        let mut cut = false;
        while let Ok(buf) = r.fill_buf().await {
            if buf.is_empty() {
                if !line.is_empty() || cut {
                    self.emit(stream, &line, cut).await;
                }
                break;
            }
            let (chunk, used, end) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            cut |= chunk.len() > room;
            r.consume(used);
            if end {
                self.emit(stream, &line, cut).await;
                line.clear();
                cut = false;
            }
        }
    }

    async fn emit(&self, stream: Stream, bytes: &[u8], cut: bool) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        if cut {
            self.output(stream, &format!("{text} [line cut at {} KiB]", MAX_LINE_BYTES >> 10)).await;
        } else {
            self.output(stream, text).await;
        }
    }
}

/// Removes what a terminal would interpret: ANSI escape sequences (CSI and OSC),
/// other C0/C1 control characters (a tab stays), and bidirectional overrides.
pub fn sanitize(line: &str) -> String {
    clean(line, false)
}

/// As [`sanitize`], but keeps colours (SGR: `ESC [ digits;… m`), which a
/// step's tools print and which cannot move the cursor or overwrite pipe's
/// own text: what a step prints to the console goes through this.
pub fn sanitize_keep_colors(line: &str) -> String {
    clean(line, true)
}

fn clean(line: &str, keep_colors: bool) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, up to a final byte.
                Some('[') => {
                    let mut sequence = String::new();
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            let color = c == 'm' && sequence.chars().all(|p| p.is_ascii_digit() || p == ';');
                            if keep_colors && color {
                                out.push_str("\u{1b}[");
                                out.push_str(&sequence);
                                out.push('m');
                            }
                            break;
                        }
                        sequence.push(c);
                    }
                }
                // OSC (titles, hyperlinks): up to BEL or ESC \\.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_longer_than_the_cap_is_cut_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (events, mut rx) = Events::channel();
        let log = StepLog::new(dir.path().join("s.log"), "s", events, Masker::default());
        let text = format!("{}\nshort\n", "y".repeat(100 << 10));
        log.clone().pump(text.as_bytes(), Stream::Stdout).await;
        let mut lines = Vec::new();
        while let Ok(Event::StepLog { line, .. }) = rx.try_recv() {
            lines.push(line);
        }
        assert_eq!(lines.len(), 2, "the rest of the long line is dropped, the next line kept");
        assert!(lines[0].ends_with(" [line cut at 64 KiB]"), "{}", &lines[0][lines[0].len() - 40..]);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES + " [line cut at 64 KiB]".len());
        assert_eq!(lines[1], "short");
    }

    #[test]
    fn terminal_control_is_removed() {
        assert_eq!(sanitize("\u{1b}[31mred\u{1b}[0m plain"), "red plain");
        assert_eq!(sanitize("\u{1b}]0;title\u{7}after"), "after");
        assert_eq!(sanitize("a\rb\u{8}c\td"), "abc\td");
        assert_eq!(sanitize("\u{202e}evil"), "evil");
        assert_eq!(sanitize("✓ deploy.ship 1.2s"), "✓ deploy.ship 1.2s");
        assert_eq!(super::sanitize_keep_colors("\u{1b}[1;32mok\u{1b}[0m"), "\u{1b}[1;32mok\u{1b}[0m");
        assert_eq!(super::sanitize_keep_colors("\r\u{1b}[2K\u{1b}[1A✓ forged\u{1b}]0;t\u{7}"), "✓ forged");
    }
}
