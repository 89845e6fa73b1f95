//! A step's log: masked lines go to `logs/<step>.log` (renamed into place when
//! the step ends), to the live event stream, and to a short tail for the summary.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::event::{Event, Events, Stream};
use super::mask::Masker;

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
    file: Option<BufWriter<File>>,
    partial: PathBuf,
    path: PathBuf,
    tail: VecDeque<String>,
    bytes: u64,
    truncated: bool,
}

impl StepLog {
    pub fn create(path: PathBuf, step: &str, events: Events, masker: Masker) -> std::io::Result<StepLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = path.with_extension("log.partial");
        let file = BufWriter::new(File::create(&partial)?);
        Ok(StepLog {
            step: step.into(),
            events,
            masker,
            inner: Arc::new(Mutex::new(Inner {
                file: Some(file),
                partial,
                path,
                tail: VecDeque::new(),
                bytes: 0,
                truncated: false,
            })),
        })
    }

    pub fn line(&self, stream: Stream, raw: &str) {
        let line = self.masker.mask(raw);
        {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if inner.bytes > MAX_LOG_BYTES {
                if !inner.truncated {
                    inner.truncated = true;
                    let note = format!("[pipe] log cut at {MAX_LOG_BYTES} bytes");
                    if let Some(f) = inner.file.as_mut() {
                        let _ = writeln!(f, "{note}");
                    }
                    drop(inner);
                    self.events.send(Event::StepLog { step: self.step.to_string(), stream: Stream::Pipe, line: note });
                }
                return;
            }
            inner.bytes += line.len() as u64 + 1;
            if let Some(f) = inner.file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if inner.tail.len() == TAIL_LINES {
                inner.tail.pop_front();
            }
            inner.tail.push_back(line.clone());
        }
        self.events.send(Event::StepLog { step: self.step.to_string(), stream, line });
    }

    /// A line from the engine itself (attempt markers, timeouts).
    pub fn note(&self, text: &str) {
        for (i, line) in text.lines().enumerate() {
            let lead = if i == 0 { "[pipe]" } else { "      " };
            self.line(Stream::Pipe, &format!("{lead} {line}"));
        }
    }

    /// Flushes the file, moves it into place, and returns the tail.
    pub fn finish(&self) -> Vec<String> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut f) = inner.file.take() {
            let _ = f.flush();
            drop(f);
            let _ = std::fs::rename(&inner.partial, &inner.path);
        }
        inner.tail.iter().cloned().collect()
    }

    /// Copies a child's stream into the log, line by line, until it closes.
    pub async fn pump(self, reader: impl AsyncRead + Unpin, stream: Stream) {
        let mut r = BufReader::new(reader);
        let mut line: Vec<u8> = Vec::new();
        while let Ok(buf) = r.fill_buf().await {
            if buf.is_empty() {
                if !line.is_empty() {
                    self.emit(stream, &line);
                }
                break;
            }
            let (chunk, used, end) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            r.consume(used);
            if end {
                self.emit(stream, &line);
                line.clear();
            }
        }
    }

    fn emit(&self, stream: Stream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        self.line(stream, text.strip_suffix('\r').unwrap_or(&text));
    }
}
