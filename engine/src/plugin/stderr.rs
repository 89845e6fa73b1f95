//! A plugin's stderr, streamed into its step's log line by line as it writes
//! (so it is there even when the plugin is stopped by a timeout), sanitized,
//! counted against the plugin's log budget, with the last lines kept to
//! explain a trap (a panic message, an allocation failure).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::event::Stream;
use crate::step::StepLog;

/// Bytes a plugin may write to its log, host `log` calls and stderr together.
pub const MAX_LOG_BYTES: usize = 8 << 20;
const TAIL: usize = 20;

/// The log budget shared by a plugin's `log` calls and its stderr.
#[derive(Clone, Default)]
pub struct Budget(Arc<AtomicUsize>);

impl Budget {
    /// Takes `n` bytes; false once the plugin has written more than it may.
    pub fn take(&self, n: usize) -> bool {
        self.0.fetch_add(n, Ordering::Relaxed) + n <= MAX_LOG_BYTES
    }
}

pub fn over_budget() -> String {
    format!("wrote more than {} MiB of log", MAX_LOG_BYTES >> 20)
}

#[derive(Clone)]
pub struct LogPipe(Arc<Mutex<Inner>>);

struct Inner {
    log: StepLog,
    budget: Budget,
    partial: Vec<u8>,
    tail: VecDeque<String>,
}

impl LogPipe {
    pub fn new(log: StepLog, budget: Budget) -> LogPipe {
        LogPipe(Arc::new(Mutex::new(Inner { log, budget, partial: Vec::new(), tail: VecDeque::new() })))
    }

    fn write(&self, bytes: &[u8]) -> Result<(), String> {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner.budget.take(bytes.len()) {
            return Err(over_budget());
        }
        inner.partial.extend_from_slice(bytes);
        while let Some(i) = inner.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = inner.partial.drain(..=i).collect();
            inner.emit(&line[..i]);
        }
        // A line that never ends is still shown, in pieces.
        if inner.partial.len() > crate::step::log::MAX_LINE_BYTES {
            let line = std::mem::take(&mut inner.partial);
            inner.emit(&line);
        }
        Ok(())
    }

    /// Shows what was written after the last line break.
    pub fn finish(&self) {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner.partial.is_empty() {
            let line = std::mem::take(&mut inner.partial);
            inner.emit(&line);
        }
    }

    /// The last lines written, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).tail.iter().cloned().collect()
    }
}

impl Inner {
    fn emit(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches('\r');
        self.log.untrusted(Stream::Stderr, text);
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(text.to_string());
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        LogPipe::write(self, &bytes).map_err(|e| StreamError::Trap(wasmtime::format_err!(e)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(LogPipe::write(&self, buf).map(|()| buf.len()).map_err(std::io::Error::other))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
