//! A plugin built for interface 0.1.0 (the frozen `sdk/wit/v0.1.0`), without
//! the SDK: proof that plugins of an older interface keep loading.

wit_bindgen::generate!({ path: "../../../sdk/wit/v0.1.0", world: "step" });

use exports::pipe::plugin::plugin::{Description, Field, Guest, Input};
use pipe::plugin::host;

struct Legacy;

impl Guest for Legacy {
    fn describe() -> Description {
        Description {
            name: "legacy".into(),
            version: "0.1.0".into(),
            summary: "A step built for plugin interface 0.1.0".into(),
            fields: vec![Field { name: "greeting".into(), description: "what to say".into(), required: true }],
            capabilities: vec![],
        }
    }

    fn run(input: Input) -> Result<(), String> {
        let greeting = input.config.iter().find(|(k, _)| k == "greeting").map(|(_, v)| v.clone()).unwrap_or_default();
        host::log(&format!("legacy says {greeting}"));
        host::state_set("said", &greeting)?;
        host::set_output("said", &greeting)
    }
}

export!(Legacy);
