//! The plugin executor: a plugin step runs on the plugin host's own threads, so
//! that a busy or blocked plugin never delays the scheduler, the other steps or
//! its own timeout. Cancellation reaches the plugin at its next epoch tick.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::plugin::{Host, Outcome, PluginRun, step_exit};
use crate::step::{Exit, StepLog};

/// How long a cancelled plugin may take to stop before it is abandoned.
const CANCEL_GRACE: Duration = Duration::from_millis(100);

pub async fn run(call: &Arc<PluginRun>, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let host = match Host::global() {
        Ok(h) => h,
        Err(e) => return Exit::error(e),
    };
    let mut task = host.spawn(call.clone(), log.clone(), cancel.clone());
    let label = call.plugin.label();
    let joined = |r: Result<Outcome, tokio::task::JoinError>| match r {
        Ok(outcome) => step_exit(outcome, call.output_file.as_deref(), &label),
        Err(e) => Exit::Error(format!("{label}: the plugin's task ended abnormally: {e}")),
    };
    tokio::select! {
        r = &mut task => joined(r),
        () = cancel.cancelled() => match tokio::time::timeout(CANCEL_GRACE, &mut task).await {
            Ok(r) => joined(r),
            Err(_) => {
                // Stuck in a host call that does not yield: drop it where it stands.
                task.abort();
                Exit::Cancelled
            }
        },
    }
}
