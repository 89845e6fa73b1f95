//! `notify`: posts a message about the run to a webhook — a generic JSON
//! payload, or Slack- or Discord-shaped — retrying on 5xx answers. The URL
//! (often a secret) is never logged, only its host.

use std::time::Duration;

use pipe_sdk::{Capability, Context, Description, Event, Field, FieldKind, Plugin, Role, http};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    url: String,
    #[serde(default = "defaults::format")]
    format: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    pipeline: String,
    #[serde(default)]
    status: String,
    /// Comma-separated, as `${run.failed-steps}` gives them.
    #[serde(default)]
    failed: String,
    /// Where the logs are: a link, or a command such as `pipe logs <run>`.
    #[serde(default)]
    logs: String,
    #[serde(default = "defaults::attempts")]
    attempts: u32,
}

mod defaults {
    pub fn format() -> String {
        "generic".into()
    }
    pub fn attempts() -> u32 {
        3
    }
}

struct Notify;

impl Plugin for Notify {
    type Config = Config;

    fn describe() -> Description {
        Description::new("notify", env!("CARGO_PKG_VERSION"), "Post a run's outcome to a webhook")
            .field(Field::required("url", "the webhook URL (keep it in a secret)").kind(FieldKind::Url))
            .field(Field::optional("format", "generic (default), slack or discord"))
            .field(Field::optional("text", "the message"))
            .field(Field::optional("pipeline", "the pipeline, e.g. ${run.pipeline}"))
            .field(Field::optional("status", "the run's status"))
            .field(Field::optional("failed", "failed steps, e.g. ${run.failed-steps}"))
            .field(Field::optional("logs", "where the logs are"))
            .field(Field::optional("attempts", "tries on 5xx or no answer (default 3)"))
            .needs(Capability::Net)
            .role(Role::Step)
            .role(Role::Notify)
    }

    fn run(c: Config, _ctx: &Context) -> Result<(), String> {
        let failed: Vec<&str> = c.failed.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let summary = summary(&c, &failed);
        let generic = serde_json::json!({
            "pipeline": c.pipeline, "status": c.status, "failed_steps": failed,
            "logs": c.logs, "text": c.text, "summary": summary,
        });
        post(&c, &summary, generic)
    }

    fn notify(c: Config, _ctx: &Context, e: &Event) -> Result<(), String> {
        let mut summary = format!("{} {} {}: {}", e.pipeline, e.deploy, e.version, e.message);
        let facts: Vec<String> = e.details.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if !facts.is_empty() {
            summary.push_str(&format!(" ({})", facts.join(", ")));
        }
        if !e.logs.is_empty() {
            summary.push_str(&format!(" — logs: {}", e.logs));
        }
        let details: serde_json::Map<String, serde_json::Value> =
            e.details.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        let generic = serde_json::json!({
            "pipeline": e.pipeline, "deploy": e.deploy, "version": e.version, "event": e.kind,
            "message": e.message, "details": details, "logs": e.logs, "summary": summary,
        });
        post(&c, &summary, generic)
    }
}

/// Posts the message in the configured shape, retrying 5xx and no answer.
fn post(c: &Config, summary: &str, generic: serde_json::Value) -> Result<(), String> {
    {
        let body = match c.format.as_str() {
            "slack" => serde_json::json!({ "text": summary }),
            "discord" => serde_json::json!({ "content": summary }),
            "generic" => generic,
            other => return Err(format!("format `{other}`: use generic, slack or discord")),
        };
        let host = c.url.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or("the webhook");
        let mut last = String::new();
        for attempt in 1..=c.attempts.max(1) {
            let sent = http::post(&c.url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .timeout(Duration::from_secs(10))
                .send();
            match sent {
                Ok(r) if (200..300).contains(&r.status) => {
                    pipe_sdk::log(&format!("notified {host} ({})", r.status));
                    return pipe_sdk::output("status", &r.status.to_string());
                }
                Ok(r) if r.status >= 500 => last = format!("{host} answered {}", r.status),
                Ok(r) => return Err(format!("{host} refused the message: {}", r.status)),
                Err(e) => last = e.replace(&c.url, host),
            }
            pipe_sdk::log(&format!("attempt {attempt}: {last}"));
            std::thread::sleep(Duration::from_millis(300 * u64::from(attempt)));
        }
        Err(format!("could not notify {host}: {last}"))
    }
}

fn summary(c: &Config, failed: &[&str]) -> String {
    let mut s = String::new();
    if !c.pipeline.is_empty() {
        s.push_str(&format!("{} ", c.pipeline));
    }
    if !c.status.is_empty() {
        s.push_str(&c.status);
    }
    if !failed.is_empty() {
        s.push_str(&format!(" (failed: {})", failed.join(", ")));
    }
    if !c.text.is_empty() {
        s.push_str(&format!(": {}", c.text));
    }
    if !c.logs.is_empty() {
        s.push_str(&format!(" — logs: {}", c.logs));
    }
    s.trim().to_string()
}

pipe_sdk::export!(Notify);
