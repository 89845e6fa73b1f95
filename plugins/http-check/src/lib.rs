//! `http-check`: requests a URL until it answers the expected status (and,
//! optionally, a body substring or a JSON field), within `attempts` × `interval`.
//! Outputs the last status and latency.

use std::time::{Duration, Instant};

use pipe_sdk::{Capability, Context, Description, Field, Plugin, http};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    url: String,
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
            .field(Field::required("url", "the URL to request"))
            .field(Field::optional("method", "the HTTP method (default GET)"))
            .field(Field::optional("expect", "the expected status (default 200)"))
            .field(Field::optional("attempts", "how many requests at most (default 10)"))
            .field(Field::optional("interval", "wait between requests (default 1s)"))
            .field(Field::optional("request-timeout", "bound on each request (default 5s)"))
            .field(Field::optional("body-contains", "text the body must contain"))
            .field(Field::optional("json-field", "`field=value` a JSON body must have"))
            .needs(Capability::Net)
    }

    fn run(c: Config, _ctx: &Context) -> Result<(), String> {
        let interval = duration(&c.interval)?;
        let timeout = duration(&c.request_timeout)?;
        let mut last = String::new();
        for attempt in 1..=c.attempts.max(1) {
            let start = Instant::now();
            let result = http::Request::new(&c.method, &c.url).timeout(timeout).send();
            let latency = start.elapsed();
            match result {
                Ok(resp) => {
                    pipe_sdk::output("status", &resp.status.to_string())?;
                    pipe_sdk::output("latency-ms", &latency.as_millis().to_string())?;
                    match verdict(&c, &resp) {
                        Ok(()) => {
                            pipe_sdk::log(&format!("{} {} → {} in {latency:?} (attempt {attempt})", c.method, c.url, resp.status));
                            return Ok(());
                        }
                        Err(why) => last = why,
                    }
                }
                Err(e) => last = e,
            }
            pipe_sdk::log(&format!("attempt {attempt}/{}: {last}", c.attempts));
            if attempt < c.attempts {
                std::thread::sleep(interval);
            }
        }
        Err(format!("{} did not become healthy after {} attempts: {last}", c.url, c.attempts))
    }
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

/// `500ms`, `2s`, `1m`.
fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad duration `{text}`"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration `{text}`: use ms, s or m")),
    }
}

pipe_sdk::export!(HttpCheck);
