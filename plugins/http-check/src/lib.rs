//! `http-check`: requests a URL until it answers the expected status (and,
//! optionally, a body substring or a JSON field), within `attempts` × `interval`.
//! Outputs the last status and latency. As a deployment's health check, it
//! requests `path` on the instance's own address, once per call.

use std::time::Instant;

use pipe_sdk::{Capability, Context, Description, Field, FieldKind, Plugin, Role, http};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The URL a step checks.
    url: Option<String>,
    /// The path a health check requests on the instance.
    #[serde(default = "defaults::path")]
    path: String,
    #[serde(default = "defaults::method")]
    method: String,
    #[serde(default = "defaults::expect")]
    expect: u16,
    #[serde(default = "defaults::attempts")]
    attempts: u32,
    #[serde(default = "defaults::interval")]
    interval: String,
    #[serde(default = "defaults::request_timeout")]
    request_timeout: String,
    body_contains: Option<String>,
    /// `field=value`: a top-level JSON field of the body must equal the value.
    json_field: Option<String>,
}

mod defaults {
    pub fn path() -> String {
        "/".into()
    }
    pub fn method() -> String {
        "GET".into()
    }
    pub fn expect() -> u16 {
        200
    }
    pub fn attempts() -> u32 {
        10
    }
    pub fn interval() -> String {
        "1s".into()
    }
    pub fn request_timeout() -> String {
        "5s".into()
    }
}

struct HttpCheck;

impl Plugin for HttpCheck {
    type Config = Config;

    fn describe() -> Description {
        Description::new("http-check", env!("CARGO_PKG_VERSION"), "Wait until an HTTP endpoint answers as expected")
            .field(Field::optional("url", "the URL a step requests").kind(FieldKind::Url))
            .field(Field::optional("path", "the path a health check requests on the instance (default /)"))
            .field(Field::optional("method", "the HTTP method (default GET)"))
            .field(Field::optional("expect", "the expected status (default 200)"))
            .field(Field::optional("attempts", "how many requests at most (default 10)"))
            .field(Field::optional("interval", "wait between requests (default 1s)"))
            .field(Field::optional("request-timeout", "bound on each request (default 5s)"))
            .field(Field::optional("body-contains", "text the body must contain"))
            .field(Field::optional("json-field", "`field=value` a JSON body must have"))
            .needs(Capability::Net)
            .role(Role::Step)
            .role(Role::Health)
    }

    fn run(c: Config, _ctx: &Context) -> Result<(), String> {
        let url = c.url.clone().ok_or("`url` is required when http-check runs as a step")?;
        let interval = pipe_sdk::duration(&c.interval)?;
        let mut last = String::new();
        for attempt in 1..=c.attempts.max(1) {
            match once(&c, &url) {
                Ok(note) => {
                    pipe_sdk::log(&format!("{note} (attempt {attempt})"));
                    return Ok(());
                }
                Err(why) => last = why,
            }
            pipe_sdk::log(&format!("attempt {attempt}/{}: {last}", c.attempts));
            if attempt < c.attempts {
                std::thread::sleep(interval);
            }
        }
        Err(format!("{url} did not become healthy after {} attempts: {last}", c.attempts))
    }

    fn check(c: Config, _ctx: &Context, address: &str) -> Result<String, String> {
        let path = if c.path.starts_with('/') { c.path.clone() } else { format!("/{}", c.path) };
        once(&c, &format!("http://{address}{path}"))
    }
}

/// One request, judged; the outputs say what it answered.
fn once(c: &Config, url: &str) -> Result<String, String> {
    let timeout = pipe_sdk::duration(&c.request_timeout)?;
    let start = Instant::now();
    let resp = http::Request::new(&c.method, url).timeout(timeout).send()?;
    let latency = start.elapsed();
    pipe_sdk::output("status", &resp.status.to_string())?;
    pipe_sdk::output("latency-ms", &latency.as_millis().to_string())?;
    verdict(c, &resp)?;
    Ok(format!("{} {url} → {} in {}", c.method, resp.status, pipe_sdk::shown(latency)))
}

fn verdict(c: &Config, resp: &http::Response) -> Result<(), String> {
    if resp.status != c.expect {
        return Err(format!("status {} (expected {})", resp.status, c.expect));
    }
    let body = resp.text();
    if let Some(needle) = &c.body_contains
        && !body.contains(needle.as_str())
    {
        return Err(format!("body does not contain `{needle}`"));
    }
    if let Some(spec) = &c.json_field {
        let (field, want) = spec.split_once('=').ok_or("json-field is written `field=value`")?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("body is not JSON: {e}"))?;
        let got = match &json[field] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => return Err(format!("JSON has no field `{field}`")),
            other => other.to_string(),
        };
        if got != want {
            return Err(format!("JSON field `{field}` is `{got}` (expected `{want}`)"));
        }
    }
    Ok(())
}

pipe_sdk::export!(HttpCheck);
