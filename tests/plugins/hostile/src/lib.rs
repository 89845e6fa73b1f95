//! A plugin that misbehaves on purpose, one way per `mode`, to prove that the
//! sandbox holds: each must fail its own step and nothing else.

use pipe_sdk::{Context, Description, Field, Plugin};

#[derive(serde::Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    target: String,
}

struct Hostile;

impl Plugin for Hostile {
    type Config = Config;

    fn describe() -> Description {
        Description::new("hostile", "0.1.0", "Misbehaves on purpose")
            .field(Field::required("mode", "loop, alloc, read, write, connect, exec, panic, flood, env, ok, noop, calls"))
            .field(Field::optional("target", "the path or URL to attack"))
    }

    fn run(c: Config, _ctx: &Context) -> Result<(), String> {
        match c.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let big: Vec<u8> = vec![1; 1 << 30];
                pipe_sdk::log(&format!("allocated {}", big.len()));
                Ok(())
            }
            "read" => pipe_sdk::fs::read_to_string(&c.target).map(|t| pipe_sdk::log(&t)),
            "write" => pipe_sdk::fs::write(&c.target, "escaped"),
            "connect" => pipe_sdk::http::get(&c.target).send().map(|r| pipe_sdk::log(&r.text())),
            "exec" => pipe_sdk::exec("sh", &["-c", "id"]).map(|o| pipe_sdk::log(&o.stdout)),
            "panic" => panic!("hostile plugin panicked on purpose"),
            "flood" => {
                let line = "x".repeat(1 << 16);
                for _ in 0..(1u64 << 20) {
                    pipe_sdk::log(&line);
                }
                Ok(())
            }
            "env" => {
                let seen: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                pipe_sdk::output("env", &seen.join(","))
            }
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

pipe_sdk::export!(Hostile);
