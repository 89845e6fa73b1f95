//! Write [pipe](https://example.invalid/pipe) plugins in Rust.
//!
//! A plugin is a WebAssembly component (`wasm32-wasip2`) that a pipeline runs
//! as a step (`uses "name"`) or in a deployment role (`health`, `traffic`,
//! `analysis`, `notify`). It runs sandboxed: it can read and write only the
//! directories, reach only the hosts and run only the commands that the
//! pipeline grants, explicitly (`allow-read`, `allow-net`, …) or through the
//! values of its typed settings ([`FieldKind`]).
//!
//! ```no_run
//! use pipe_sdk::{Context, Description, Field, Plugin};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     name: String,
//!     #[serde(default)]
//!     shout: bool,
//! }
//!
//! struct Greet;
//!
//! impl Plugin for Greet {
//!     type Config = Config;
//!
//!     fn describe() -> Description {
//!         Description::new("greet", env!("CARGO_PKG_VERSION"), "Says hello")
//!             .field(Field::required("name", "who to greet"))
//!             .field(Field::optional("shout", "upper-case the greeting"))
//!     }
//!
//!     fn run(config: Config, _ctx: &Context) -> Result<(), String> {
//!         let text = format!("hello, {}", config.name);
//!         let text = if config.shout { text.to_uppercase() } else { text };
//!         pipe_sdk::log(&text);
//!         pipe_sdk::output("greeting", &text)
//!     }
//! }
//!
//! pipe_sdk::export!(Greet);
//! ```
//!
//! Build it with `pipe plugin build` (or `cargo build --release --target
//! wasm32-wasip2`), then try it alone with `pipe plugin run target/…/greet.wasm name=you`.
//! The interface version is the WIT package's (`wit/v0.2.0`): the host reads it
//! from the component's own imports and exports.

// Lets the generated bindings name this crate by its public path from inside it.
extern crate self as pipe_sdk;

mod config;
pub mod fs;
pub mod http;

use std::collections::BTreeMap;
use std::time::Duration;

use bindings::pipe::plugin::host;
use bindings::pipe::plugin::types as wit;
pub use bindings::pipe::plugin::types::{Backend, Capability, Event, FieldKind, Measurement, Role, Side, Window};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/v0.2.0",
        world: "pipe-plugin",
        pub_export_macro: true,
        default_bindings_module: "pipe_sdk::bindings",
        runtime_path: "pipe_sdk::__private::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen::rt;

    use super::{Context, Plugin, wit};

    pub fn describe<P: Plugin>() -> wit::Description {
        P::describe().into_wit()
    }

    /// Reads the input into the plugin's context and configuration, then calls `f`.
    pub fn with<P: Plugin, T>(
        input: wit::Input,
        f: impl FnOnce(P::Config, &Context) -> Result<T, String>,
    ) -> Result<T, String> {
        let ctx = Context {
            config: input.config.into_iter().collect(),
            env: input.env.into_iter().collect(),
            workspace: input.workspace,
        };
        let config = crate::config::from_map::<P::Config>(&ctx.config)?;
        f(config, &ctx)
    }
}

/// A plugin: what it is, and what it does in each role it takes. Implement
/// `run` for a step, and the functions of the roles your description lists.
pub trait Plugin {
    /// The settings (the properties of the pipeline's node), read with serde.
    /// Values arrive as text and are converted to the field types (numbers, booleans).
    type Config: serde::de::DeserializeOwned;

    /// Name, version, settings, capabilities and roles.
    fn describe() -> Description;

    /// Role `step`: runs the step. An `Err` fails it with that message.
    fn run(config: Self::Config, ctx: &Context) -> Result<(), String> {
        let _ = (config, ctx);
        Err(not_in_role("a step"))
    }

    /// Role `health`: one check of the instance at `address` (`host:port`).
    fn check(config: Self::Config, ctx: &Context, address: &str) -> Result<String, String> {
        let _ = (config, ctx, address);
        Err(not_in_role("a health check"))
    }

    /// Role `traffic`: route the service's traffic to `backends`, by weight.
    fn route(config: Self::Config, ctx: &Context, backends: &[Backend]) -> Result<String, String> {
        let _ = (config, ctx, backends);
        Err(not_in_role("a traffic switch"))
    }

    /// Role `analysis`: measure the canary and the baseline over `window`.
    fn measure(config: Self::Config, ctx: &Context, window: &Window) -> Result<Measurement, String> {
        let _ = (config, ctx, window);
        Err(not_in_role("an analysis"))
    }

    /// Role `notify`: tell people about a deployment event.
    fn notify(config: Self::Config, ctx: &Context, event: &Event) -> Result<(), String> {
        let _ = (config, ctx, event);
        Err(not_in_role("a notifier"))
    }
}

fn not_in_role(role: &str) -> String {
    format!("this plugin cannot be used as {role}: its description does not list that role")
}

/// What a plugin can see of the step or deployment that runs it.
#[derive(Debug)]
pub struct Context {
    /// The settings as text, as the pipeline wrote them (after interpolation).
    pub config: BTreeMap<String, String>,
    /// Environment variables the step granted with `allow-env`.
    pub env: BTreeMap<String, String>,
    /// The pipeline's directory, when granted.
    pub workspace: Option<String>,
}

/// Who a plugin is and what it needs.
#[derive(Clone, Debug)]
pub struct Description {
    name: String,
    version: String,
    summary: String,
    fields: Vec<Field>,
    capabilities: Vec<Capability>,
    roles: Vec<Role>,
}

impl Description {
    pub fn new(name: &str, version: &str, summary: &str) -> Self {
        Description {
            name: name.into(),
            version: version.into(),
            summary: summary.into(),
            fields: Vec::new(),
            capabilities: Vec::new(),
            roles: Vec::new(),
        }
    }

    pub fn field(mut self, field: Field) -> Self {
        self.fields.push(field);
        self
    }

    /// Declares a capability; `pipe check` fails a step that does not grant it.
    pub fn needs(mut self, capability: Capability) -> Self {
        self.capabilities.push(capability);
        self
    }

    /// Declares a role the plugin takes (a plugin that declares none is a step).
    pub fn role(mut self, role: Role) -> Self {
        self.roles.push(role);
        self
    }

    fn into_wit(self) -> wit::Description {
        wit::Description {
            name: self.name,
            version: self.version,
            summary: self.summary,
            fields: self
                .fields
                .into_iter()
                .map(|f| wit::Field { name: f.name, description: f.description, required: f.required, kind: f.kind })
                .collect(),
            capabilities: self.capabilities,
            roles: if self.roles.is_empty() { vec![Role::Step] } else { self.roles },
        }
    }
}

/// One setting.
#[derive(Clone, Debug)]
pub struct Field {
    name: String,
    description: String,
    required: bool,
    kind: FieldKind,
}

impl Field {
    pub fn required(name: &str, description: &str) -> Self {
        Field { name: name.into(), description: description.into(), required: true, kind: FieldKind::Text }
    }

    pub fn optional(name: &str, description: &str) -> Self {
        Field { name: name.into(), description: description.into(), required: false, kind: FieldKind::Text }
    }

    /// What the value is; a typed value is also a grant of exactly that
    /// (a file's directory, a command, a URL's host, an address).
    pub fn kind(mut self, kind: FieldKind) -> Self {
        self.kind = kind;
        self
    }
}

/// Appends a line to the step's log.
pub fn log(line: &str) {
    host::log(line);
}

/// Sets a step output (`${steps.<stage>.<step>.outputs.<key>}` in later steps).
pub fn output(key: &str, value: &str) -> Result<(), String> {
    host::set_output(key, value)
}

/// A duration in pipe's own grammar (`500ms`, `30s`, `10m`, `1h 30m`), as a
/// pipeline writes it.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("bad duration `{text}`: {e}"))
}

/// A duration as people read it, in pipe's grammar, to the millisecond:
/// `12ms`, `1s 500ms` (never Rust's `1.624189ms`).
pub fn shown(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// The pipeline's persistent state: small facts that outlive a run, stored
/// under this plugin's name.
pub mod state {
    use super::host;

    pub fn get(key: &str) -> Option<String> {
        host::state_get(key)
    }

    pub fn set(key: &str, value: &str) -> Result<(), String> {
        host::state_set(key, value)
    }
}

/// What a command run with [`exec`] did.
pub use host::ExecOutput;

/// Runs a command the step allowed (`allow-exec`, or a `command` setting).
pub fn exec(program: &str, args: &[&str]) -> Result<ExecOutput, String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    host::exec(program, &args)
}

/// Runs a command line from a setting, split into words as a shell would
/// (quotes respected, no expansion).
pub fn exec_line(line: &str) -> Result<ExecOutput, String> {
    let words = shell_words::split(line).map_err(|e| format!("cannot split `{line}`: {e}"))?;
    let (program, args) = words.split_first().ok_or_else(|| "empty command".to_string())?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    exec(program, &args)
}

/// Exports a [`Plugin`] implementation as the component's entry points.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        struct __PipePluginExport;

        impl $crate::bindings::exports::pipe::plugin::plugin::Guest for __PipePluginExport {
            fn describe() -> $crate::bindings::pipe::plugin::types::Description {
                $crate::__private::describe::<$plugin>()
            }

            fn run(input: $crate::bindings::pipe::plugin::types::Input) -> Result<(), String> {
                $crate::__private::with::<$plugin, _>(input, |c, ctx| <$plugin as $crate::Plugin>::run(c, ctx))
            }

            fn check(input: $crate::bindings::pipe::plugin::types::Input, address: String) -> Result<String, String> {
                $crate::__private::with::<$plugin, _>(input, |c, ctx| <$plugin as $crate::Plugin>::check(c, ctx, &address))
            }

            fn route(
                input: $crate::bindings::pipe::plugin::types::Input,
                backends: Vec<$crate::Backend>,
            ) -> Result<String, String> {
                $crate::__private::with::<$plugin, _>(input, |c, ctx| <$plugin as $crate::Plugin>::route(c, ctx, &backends))
            }

            fn measure(
                input: $crate::bindings::pipe::plugin::types::Input,
                window: $crate::Window,
            ) -> Result<$crate::Measurement, String> {
                $crate::__private::with::<$plugin, _>(input, |c, ctx| <$plugin as $crate::Plugin>::measure(c, ctx, &window))
            }

            fn notify(input: $crate::bindings::pipe::plugin::types::Input, event: $crate::Event) -> Result<(), String> {
                $crate::__private::with::<$plugin, _>(input, |c, ctx| <$plugin as $crate::Plugin>::notify(c, ctx, &event))
            }
        }

        $crate::bindings::export!(__PipePluginExport with_types_in $crate::bindings);
    };
}
