//! `nginx-switch`: points an nginx `upstream` at new servers. Writes the include
//! atomically (write, then rename), tests the configuration and reloads nginx
//! through the step's exec grant; if either fails, puts the previous file back
//! and fails the step. Records the previous and current servers in the
//! pipeline's state so that a later step or run can switch back.

use std::path::Path;

use pipe_sdk::{Capability, Context, Description, Field, Plugin, state};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The include file nginx reads, e.g. /srv/nginx/app.inc.
    file: String,
    /// The upstream's name.
    upstream: String,
    /// `host:port`, comma-separated; `host:port=weight` for weighted (canary) traffic.
    servers: String,
    #[serde(default = "defaults::test")]
    test: String,
    #[serde(default = "defaults::reload")]
    reload: String,
}

mod defaults {
    pub fn test() -> String {
        "nginx -t".into()
    }
    pub fn reload() -> String {
        "nginx -s reload".into()
    }
}

struct NginxSwitch;

impl Plugin for NginxSwitch {
    type Config = Config;

    fn describe() -> Description {
        Description::new("nginx-switch", env!("CARGO_PKG_VERSION"), "Point an nginx upstream at new servers, safely")
            .field(Field::required("file", "the upstream include nginx reads"))
            .field(Field::required("upstream", "the upstream's name"))
            .field(Field::required("servers", "host:port[=weight], comma-separated"))
            .field(Field::optional("test", "command that tests the configuration (default `nginx -t`)"))
            .field(Field::optional("reload", "command that reloads nginx (default `nginx -s reload`)"))
            .needs(Capability::Write)
            .needs(Capability::Exec)
            .needs(Capability::State)
    }

    fn run(c: Config, _ctx: &Context) -> Result<(), String> {
        let servers = parse_servers(&c.servers)?;
        let file = Path::new(&c.file);
        let previous = std::fs::read_to_string(file).ok();
        if let Some(dir) = file.parent() {
            // Fails with the grant to add when the directory is not granted.
            pipe_sdk::fs::write(dir.join(".pipe-probe"), "")?;
            let _ = std::fs::remove_file(dir.join(".pipe-probe"));
        }
        let text = render(&c.upstream, &servers);
        write_atomically(file, &text)?;
        if let Err(e) = command(&c.test).and_then(|()| command(&c.reload)) {
            match &previous {
                Some(old) => write_atomically(file, old)?,
                None => pipe_sdk::fs::remove_file(file)?,
            }
            pipe_sdk::log(&format!("restored the previous {}", c.file));
            return Err(e);
        }
        let current = servers.iter().map(|(s, w)| format!("{s}={w}")).collect::<Vec<_>>().join(",");
        let key = |what: &str| format!("nginx-switch.{}.{what}", c.upstream);
        let before = state::get(&key("current")).unwrap_or_default();
        state::set(&key("previous"), &before)?;
        state::set(&key("current"), &current)?;
        pipe_sdk::output("previous", &before)?;
        pipe_sdk::output("current", &current)?;
        pipe_sdk::log(&format!("upstream {} → {current}", c.upstream));
        Ok(())
    }
}

fn parse_servers(list: &str) -> Result<Vec<(String, u32)>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (server, weight) = match item.split_once('=') {
            Some((s, w)) => (s.trim(), w.trim().parse::<u32>().map_err(|_| format!("bad weight in `{item}`"))?),
            None => (item, 1),
        };
        if !server.contains(':') || server.contains([';', '{', '}', ' ']) {
            return Err(format!("`{server}` is not host:port"));
        }
        out.push((server.to_string(), weight));
    }
    if out.iter().all(|(_, w)| *w == 0) {
        return Err("no server takes traffic".into());
    }
    Ok(out)
}

fn render(upstream: &str, servers: &[(String, u32)]) -> String {
    let mut text = format!("# written by pipe (nginx-switch); changes here are overwritten\nupstream {upstream} {{\n");
    for (server, weight) in servers {
        if *weight == 0 {
            text.push_str(&format!("    server {server} down;\n"));
        } else {
            text.push_str(&format!("    server {server} weight={weight};\n"));
        }
    }
    text.push_str("}\n");
    text
}

fn write_atomically(file: &Path, text: &str) -> Result<(), String> {
    let tmp = file.with_extension("pipe-tmp");
    pipe_sdk::fs::write(&tmp, text)?;
    pipe_sdk::fs::rename(&tmp, file)
}

fn command(line: &str) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (program, args) = words.split_first().ok_or("empty command")?;
    let out = pipe_sdk::exec(program, args)?;
    if out.status == 0 {
        return Ok(());
    }
    for l in out.stderr.lines().chain(out.stdout.lines()) {
        pipe_sdk::log(l);
    }
    Err(format!("`{line}` failed with status {}", out.status))
}

pipe_sdk::export!(NginxSwitch);
