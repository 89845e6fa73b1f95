//! A plugin built for an interface major version no pipe speaks (9.0.0): the
//! host must refuse it by its imports and exports, with a version message.

wit_bindgen::generate!({ path: "wit", world: "pipe-plugin" });

use exports::pipe::plugin::plugin::Guest;
use pipe::plugin::types::{Backend, Description, Event, Input, Measurement, Window};

struct Future;

impl Guest for Future {
    fn describe() -> Description {
        Description {
            name: "future".into(),
            version: "9.0.0".into(),
            summary: "From a pipe that does not exist yet".into(),
            fields: vec![],
            capabilities: vec![],
            roles: vec![],
        }
    }

    fn run(_: Input) -> Result<(), String> {
        pipe::plugin::host::log("this must never run");
        Ok(())
    }

    fn check(_: Input, _: String) -> Result<String, String> {
        Err("no".into())
    }

    fn route(_: Input, _: Vec<Backend>) -> Result<String, String> {
        Err("no".into())
    }

    fn measure(_: Input, _: Window) -> Result<Measurement, String> {
        Err("no".into())
    }

    fn notify(_: Input, _: Event) -> Result<(), String> {
        Err("no".into())
    }
}

export!(Future);
