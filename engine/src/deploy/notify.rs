//! Deploy events for notifier plugins: started, step reached, verdicts,
//! waiting for approval, promoted, rolled back, failed, succeeded. A notifier
//! that fails is noted in the log; it never fails the deployment.

use super::driver::Driver;
use super::roles::RoleRun;
use crate::plugin::contract::DeployEvent;

#[derive(Debug)]
pub struct NotifyRun {
    pub role: RoleRun,
    /// The event kinds it hears about; empty: all.
    pub on: Vec<String>,
}

impl Driver<'_> {
    /// Sends one event to every notifier that listens for its kind.
    pub(super) async fn notify(&self, kind: &str, message: String, details: Vec<(String, String)>) {
        let listening: Vec<&NotifyRun> =
            self.d.notify.iter().filter(|n| n.on.is_empty() || n.on.iter().any(|k| k == kind)).collect();
        if listening.is_empty() {
            return;
        }
        let mut details = details;
        details.insert(0, ("strategy".into(), self.d.strategy.name().into()));
        let event = DeployEvent {
            pipeline: self.d.pipeline.clone(),
            deploy: self.d.name.clone(),
            version: self.log.masker().mask(&self.report.version),
            kind: kind.to_string(),
            message: self.log.masker().mask(&message),
            details: details.into_iter().map(|(k, v)| (k, self.log.masker().mask(&v))).collect(),
            logs: self.d.logs.clone(),
        };
        for n in listening {
            // A notification outlives a cancelled deployment: people must hear of it.
            let own = tokio_util::sync::CancellationToken::new();
            if let Err(e) = n.role.notify(event.clone(), self.log, &own).await {
                self.log.note(&format!("  notify {} ({kind}) failed: {e}", n.role.label()));
            }
        }
    }
}
