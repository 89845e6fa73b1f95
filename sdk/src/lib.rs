//! Write [pipe](https://example.invalid/pipe) plugins in Rust.
//!
//! A plugin is a WebAssembly component (`wasm32-wasip2`) that a pipeline step runs
//! with `uses "name"`. It runs sandboxed: it can read and write only the
//! directories, reach only the hosts and run only the commands that the step
//! grants (`allow-read`, `allow-write`, `allow-net`, `allow-exec`).
//!
//! ```no_run
//! use pipe_sdk::{Capability, Context, Description, Field, Plugin};
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
//!     fn run(config: Config, ctx: &Context) -> Result<(), String> {
//!         let text = format!("hello, {}", config.name);
//!         let text = if config.shout { text.to_uppercase() } else { text };
//!         pipe_sdk::log(&text);
//!         pipe_sdk::output("greeting", &text)?;
//!         let _ = ctx;
//!         Ok(())
//!     }
//! }
//!
//! pipe_sdk::export!(Greet);
//! ```
//!
//! Build it with `pipe plugin build` (or `cargo build --release --target
//! wasm32-wasip2`), then try it alone with `pipe plugin run target/…/greet.wasm name=you`.

// Lets the generated bindings name this crate by its public path from inside it.
extern crate self as pipe_sdk;

mod config;
pub mod fs;
pub mod http;

use std::collections::BTreeMap;

use bindings::exports::pipe::plugin::plugin as wit;
pub use bindings::exports::pipe::plugin::plugin::Capability;
use bindings::pipe::plugin::host;

/// The interface version this SDK implements; the host checks it before loading.
pub const INTERFACE_VERSION: &str = "0.1.0";

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "step",
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

    pub fn run<P: Plugin>(input: wit::Input) -> Result<(), String> {
        let ctx = Context {
            config: input.config.into_iter().collect(),
            env: input.env.into_iter().collect(),
            workspace: input.workspace,
        };
        let config = crate::config::from_map::<P::Config>(&ctx.config)?;
        P::run(config, &ctx)
    }
}

/// A plugin: what it is, and what it does when a step runs it.
pub trait Plugin {
    /// The step's configuration (the properties of its `uses` node), read with serde.
    /// Values arrive as text and are converted to the field types (numbers, booleans).
    type Config: serde::de::DeserializeOwned;

    /// Name, version, configuration fields and the capabilities the plugin needs.
    fn describe() -> Description;

    /// Runs the step. An `Err` fails it with that message.
    fn run(config: Self::Config, ctx: &Context) -> Result<(), String>;
}

/// What a plugin can see of the step that runs it.
#[derive(Debug)]
pub struct Context {
    /// The configuration as text, as the pipeline wrote it (after interpolation).
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
}

impl Description {
    pub fn new(name: &str, version: &str, summary: &str) -> Self {
        Description {
            name: name.into(),
            version: version.into(),
            summary: summary.into(),
            fields: Vec::new(),
            capabilities: Vec::new(),
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

    fn into_wit(self) -> wit::Description {
        wit::Description {
            name: self.name,
            version: self.version,
            summary: self.summary,
            fields: self
                .fields
                .into_iter()
                .map(|f| wit::Field { name: f.name, description: f.description, required: f.required })
                .collect(),
            capabilities: self.capabilities,
        }
    }
}

/// One configuration key.
#[derive(Clone, Debug)]
pub struct Field {
    name: String,
    description: String,
    required: bool,
}

impl Field {
    pub fn required(name: &str, description: &str) -> Self {
        Field { name: name.into(), description: description.into(), required: true }
    }

    pub fn optional(name: &str, description: &str) -> Self {
        Field { name: name.into(), description: description.into(), required: false }
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

/// The pipeline's persistent state: small facts that outlive a run.
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

/// Runs a command the step allowed with `allow-exec`. Refused otherwise.
pub fn exec(program: &str, args: &[&str]) -> Result<ExecOutput, String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    host::exec(program, &args)
}

/// Exports a [`Plugin`] implementation as the component's entry points, and
/// stamps the interface version into the component for the host to check.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        struct __PipePluginExport;

        impl $crate::bindings::exports::pipe::plugin::plugin::Guest for __PipePluginExport {
            fn describe() -> $crate::bindings::exports::pipe::plugin::plugin::Description {
                $crate::__private::describe::<$plugin>()
            }

            fn run(input: $crate::bindings::exports::pipe::plugin::plugin::Input) -> Result<(), String> {
                $crate::__private::run::<$plugin>(input)
            }
        }

        $crate::bindings::export!(__PipePluginExport with_types_in $crate::bindings);

        // Read by the host before it compiles the component.
        #[allow(unsafe_code)]
        #[unsafe(link_section = "pipe-plugin-interface")]
        #[used]
        static __PIPE_PLUGIN_INTERFACE: [u8; 5] = *b"0.1.0";
    };
}
