//! `nginx-switch`: points nginx at new backends. Writes an include file
//! atomically (write, then rename), tests the configuration and reloads nginx;
//! if either fails, puts the previous file back and fails. The include is an
//! `upstream` block by default, or any text from a `template` (for a layout
//! such as `set $service_url http://{address}; proxy_pass $service_url;`).
//!
//! As a step, `servers` names the backends; as a deployment's traffic switch,
//! the deployment passes them. Records the previous and current backends in its
//! state so that a later step or run can switch back.

use std::path::Path;

use pipe_sdk::{Backend, Capability, Context, Description, Field, FieldKind, Plugin, Role, state};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The include file nginx reads, e.g. /srv/nginx/app.inc.
    file: String,
    /// The upstream's name (also the state key).
    upstream: String,
    /// Step only: `host:port`, comma-separated; `host:port=weight` for weighted traffic.
    servers: Option<String>,
    /// What the file holds instead of an `upstream` block: `{address}` is the
    /// backend, `{servers}` the `server …;` lines.
    template: Option<String>,
    /// Tests the configuration, e.g. `nginx -t`: a command setting, so the
    /// host lets the plugin run exactly this.
    test: String,
    /// Reloads nginx, e.g. `nginx -s reload`.
    reload: String,
    /// `ip`: a client stays on one side while weights change (consistent
    /// hashing of its address, weights respected).
    sticky: Option<String>,
}

struct NginxSwitch;

impl Plugin for NginxSwitch {
    type Config = Config;

    fn describe() -> Description {
        Description::new("nginx-switch", env!("CARGO_PKG_VERSION"), "Point nginx at new backends, safely")
            .field(Field::required("file", "the include nginx reads").kind(FieldKind::FileWrite))
            .field(Field::required("upstream", "the upstream's name"))
            .field(Field::optional("servers", "step only: host:port[=weight], comma-separated"))
            .field(Field::optional("template", "the include's text: {address} and {servers} are filled in"))
            .field(Field::required("test", "command that tests the configuration, e.g. `nginx -t`").kind(FieldKind::Command))
            .field(Field::required("reload", "command that reloads nginx, e.g. `nginx -s reload`").kind(FieldKind::Command))
            .field(Field::optional("sticky", "`ip`: a client stays on one backend (consistent hash of its address)"))
            .needs(Capability::Write)
            .needs(Capability::Exec)
            .needs(Capability::State)
            .role(Role::Step)
            .role(Role::Traffic)
    }

    fn run(c: Config, _ctx: &Context) -> Result<(), String> {
        let servers = c.servers.as_deref().ok_or("`servers` is required when nginx-switch runs as a step")?;
        let backends = parse_servers(servers)?;
        let note = switch(&c, &backends)?;
        pipe_sdk::log(&note);
        Ok(())
    }

    fn route(c: Config, _ctx: &Context, backends: &[Backend]) -> Result<String, String> {
        switch(&c, backends)
    }
}

fn switch(c: &Config, backends: &[Backend]) -> Result<String, String> {
    if backends.iter().all(|b| b.weight == 0) {
        return Err("no backend takes traffic".into());
    }
    for b in backends {
        if !b.address.contains(':') || b.address.contains([';', '{', '}', ' ', '\n']) {
            return Err(format!("`{}` is not host:port", b.address));
        }
    }
    let text = render(c, backends)?;
    let file = Path::new(&c.file);
    let previous = std::fs::read_to_string(file).ok();
    write_atomically(file, &text)?;
    if let Err(e) = command(&c.test).and_then(|()| command(&c.reload)) {
        match &previous {
            Some(old) => write_atomically(file, old)?,
            None => pipe_sdk::fs::remove_file(file)?,
        }
        pipe_sdk::log(&format!("restored the previous {}", c.file));
        return Err(e);
    }
    let current = backends.iter().map(|b| format!("{}={}", b.address, b.weight)).collect::<Vec<_>>().join(",");
    let key = |what: &str| format!("{}.{what}", c.upstream);
    let before = state::get(&key("current")).unwrap_or_default();
    state::set(&key("previous"), &before)?;
    state::set(&key("current"), &current)?;
    pipe_sdk::output("previous", &before)?;
    pipe_sdk::output("current", &current)?;
    Ok(format!("{} → {current} (nginx reloaded)", c.upstream))
}

fn parse_servers(list: &str) -> Result<Vec<Backend>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (address, weight) = match item.split_once('=') {
            Some((s, w)) => (s.trim(), w.trim().parse::<u32>().map_err(|_| format!("bad weight in `{item}`"))?),
            None => (item, 1),
        };
        out.push(Backend { address: address.to_string(), weight });
    }
    Ok(out)
}

fn render(c: &Config, backends: &[Backend]) -> Result<String, String> {
    let servers: String = backends
        .iter()
        .map(|b| match b.weight {
            0 => format!("    server {} down;\n", b.address),
            w => format!("    server {} weight={w};\n", b.address),
        })
        .collect();
    let header = "# written by pipe (nginx-switch); changes here are overwritten\n";
    let sticky = match c.sticky.as_deref() {
        None => "",
        Some("ip") => "    hash $remote_addr consistent;\n",
        Some(other) => return Err(format!("sticky=\"{other}\": nginx-switch knows `ip`")),
    };
    let Some(template) = &c.template else {
        return Ok(format!("{header}upstream {} {{\n{sticky}{servers}}}\n", c.upstream));
    };
    let live: Vec<&Backend> = backends.iter().filter(|b| b.weight > 0).collect();
    if template.contains("{address}") && live.len() != 1 {
        return Err("`{address}` in a template names one backend; weighted traffic needs an `upstream`".into());
    }
    let address = live.first().map(|b| b.address.as_str()).unwrap_or_default();
    Ok(format!("{header}{}\n", template.replace("{address}", address).replace("{servers}", servers.trim_end())))
}

fn write_atomically(file: &Path, text: &str) -> Result<(), String> {
    let tmp = file.with_extension("pipe-tmp");
    pipe_sdk::fs::write(&tmp, text)?;
    pipe_sdk::fs::rename(&tmp, file)
}

fn command(line: &str) -> Result<(), String> {
    let out = pipe_sdk::exec_line(line)?;
    if out.status == 0 {
        return Ok(());
    }
    for l in out.stderr.lines().chain(out.stdout.lines()) {
        pipe_sdk::log(l);
    }
    Err(format!("`{line}` failed with status {}", out.status))
}

pipe_sdk::export!(NginxSwitch);
