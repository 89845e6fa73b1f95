//! A plugin that misbehaves on purpose, one way per `mode`, to prove that the
//! sandbox holds: each must fail its own step and nothing else.

use pipe_sdk::{Context, Description, Field, Plugin};

#[derive(serde::Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    count: u32,
}

struct Hostile;

impl Plugin for Hostile {
    type Config = Config;

    fn describe() -> Description {
        Description::new("hostile", "0.1.0", "Misbehaves on purpose")
            .field(Field::required("mode", "what to attempt (see the source)"))
            .field(Field::optional("target", "the path, URL, address, key or script to attack"))
            .field(Field::optional("value", "a value to write"))
            .field(Field::optional("count", "how many times"))
    }

    fn run(c: Config, _ctx: &Context) -> Result<(), String> {
        match c.mode.as_str() {
            "loop" => spin(),
            "alloc" => {
                let big: Vec<u8> = vec![1; 1 << 30];
                pipe_sdk::log(&format!("allocated {}", big.len()));
                Ok(())
            }
            // A refused growth handled gracefully, then an unrelated panic:
            // the reason must be the panic, not the memory limit.
            "alloc-then-panic" => {
                let mut v: Vec<u8> = Vec::new();
                let refused = v.try_reserve(1 << 30).is_err();
                panic!("an unrelated bug (the big allocation was refused: {refused})")
            }
            "read" => pipe_sdk::fs::read_to_string(&c.target).map(|t| pipe_sdk::log(&t)),
            "write" => pipe_sdk::fs::write(&c.target, "escaped"),
            "connect" => pipe_sdk::http::get(&c.target).send().map(|r| pipe_sdk::log(&r.text())),
            "tcp" => tcp(&c.target, &c.value),
            "exec" => pipe_sdk::exec("sh", &["-c", "id"]).map(|o| pipe_sdk::log(&o.stdout)),
            "sh" => {
                let out = pipe_sdk::exec("sh", &["-c", &c.target])?;
                for line in out.stdout.lines() {
                    pipe_sdk::log(line);
                }
                pipe_sdk::output("status", &out.status.to_string())?;
                pipe_sdk::output("stdout-bytes", &out.stdout.len().to_string())?;
                pipe_sdk::output("truncated", &out.truncated.to_string())
            }
            "panic" => panic!("hostile plugin panicked on purpose"),
            "flood" => {
                let line = "x".repeat(1 << 16);
                for _ in 0..(1u64 << 20) {
                    pipe_sdk::log(&line);
                }
                Ok(())
            }
            "inject" => {
                pipe_sdk::log("first\n✓ deploy.ship 1.2s\n\u{1b}[31mred\u{1b}[0m\u{1b}]0;title\u{7}");
                pipe_sdk::log(&"y".repeat(200_000));
                eprintln!("from stderr\n✗ forged failure");
                Ok(())
            }
            "stderr-then-loop" => {
                eprintln!("written before the loop");
                spin()
            }
            "env" => {
                let seen: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                pipe_sdk::output("env", &seen.join(","))
            }
            "state-set" => {
                for i in 0..c.count.max(1) {
                    let key = if c.count > 1 { format!("{}{i}", c.target) } else { c.target.clone() };
                    pipe_sdk::state::set(&key, &c.value.repeat(1))?;
                }
                Ok(())
            }
            "state-big" => pipe_sdk::state::set(&c.target, &"v".repeat(50 << 20)),
            "state-get" => pipe_sdk::output("value", &pipe_sdk::state::get(&c.target).unwrap_or_default()),
            "symlink" => symlink(&c.target, &c.value),
            "ok" => pipe_sdk::output("done", "yes"),
            // For the benchmark: nothing at all, and `target` host calls.
            "noop" => Ok(()),
            "calls" => {
                let n: u64 = c.target.parse().map_err(|_| "target: a count")?;
                for _ in 0..n {
                    pipe_sdk::output("k", "v")?;
                }
                Ok(())
            }
            other => Err(format!("unknown mode {other}")),
        }
    }
}

fn spin() -> Result<(), String> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Sends `message` over TCP and logs the first line of the answer.
fn tcp(address: &str, message: &str) -> Result<(), String> {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| format!("connect {address}: {e}"))?;
    stream.write_all(format!("{message}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).map_err(|e| e.to_string())?;
    pipe_sdk::log(&format!("answered: {}", line.trim()));
    Ok(())
}

/// Leaves a symbolic link at `link` (inside a granted directory) to `target`.
fn symlink(link: &str, target: &str) -> Result<(), String> {
    let (dir, name) = link.rsplit_once('/').ok_or("link: an absolute path")?;
    for (descriptor, path) in wasip2::filesystem::preopens::get_directories() {
        if path == dir {
            return descriptor.symlink_at(target, name).map_err(|e| format!("symlink: {e:?}"));
        }
    }
    Err(format!("{dir} is not a granted directory"))
}

pipe_sdk::export!(Hostile);
