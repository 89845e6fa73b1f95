//! The plugin executor: a plugin step runs on the plugin host's own threads
//! (see `Host::call`), so that a busy or blocked plugin never delays the
//! scheduler, the other steps or its own timeout.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::plugin::{Host, PluginRun, step_exit};
use crate::step::{Exit, StepLog};

pub async fn run(call: &Arc<PluginRun>, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let host = match Host::global() {
        Ok(h) => h,
        Err(e) => return Exit::error(e),
    };
    let outcome = host.call(call.clone(), log, cancel).await;
    step_exit(outcome, call.output_file.as_deref(), &call.plugin.label())
}
