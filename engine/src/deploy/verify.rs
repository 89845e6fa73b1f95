//! Verifying a switch through the public URL: the proxy serves the expected
//! answer `times` times in a row, each on a new connection (a connection from
//! before the switch could still reach an old nginx worker).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::DeployError;
use super::http::{Target, get_once};
use super::instance::fmt;

#[derive(Clone, Debug)]
pub struct VerifyRun {
    pub url: String,
    pub status: u16,
    /// Text the body must hold (the new version); not checked when going back.
    pub body_contains: Option<String>,
    pub times: u32,
    pub timeout: Duration,
}

const PAUSE: Duration = Duration::from_millis(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl VerifyRun {
    /// Waits for `times` good answers in a row; `body` says whether the body
    /// is checked. Returns a note and when the first good answer came.
    /// `verdict` is asked between tries: a failing version must not keep the
    /// traffic for the whole timeout once the probe has seen enough.
    pub async fn run(
        &self,
        body: bool,
        cancel: &CancellationToken,
        verdict: &(dyn Fn() -> Option<DeployError> + Sync),
    ) -> Result<(String, Instant), DeployError> {
        let target = Target::parse(&self.url).map_err(DeployError::Verify)?;
        let started = Instant::now();
        let (mut streak, mut tries) = (0, 0);
        let mut first_good = None;
        let mut last = String::from("no answer yet");
        while streak < self.times {
            if let Some(e) = verdict() {
                return Err(e);
            }
            if started.elapsed() > self.timeout {
                return Err(DeployError::Verify(format!(
                    "{} did not answer as expected {}× in a row within {} ({tries} tries; last: {last})",
                    self.url,
                    self.times,
                    fmt(self.timeout)
                )));
            }
            tries += 1;
            match get_once(&target, REQUEST_TIMEOUT).await {
                Ok(a) if a.status != self.status => last = format!("status {} (expected {})", a.status, self.status),
                Ok(a) => match self.body_contains.as_deref().filter(|_| body) {
                    Some(want) if !String::from_utf8_lossy(&a.body).contains(want) => {
                        last = format!("the body does not contain `{want}`");
                    }
                    _ => {
                        first_good.get_or_insert_with(Instant::now);
                        streak += 1;
                        continue;
                    }
                },
                Err(e) => last = e,
            }
            streak = 0;
            first_good = None;
            tokio::select! {
                () = tokio::time::sleep(PAUSE) => {}
                () = cancel.cancelled() => return Err(DeployError::Cancelled),
            }
        }
        let note = format!(
            "{} answered as expected {}× in a row ({tries} tries, {})",
            self.url,
            self.times,
            fmt(started.elapsed())
        );
        Ok((note, first_good.unwrap_or_else(Instant::now)))
    }
}
