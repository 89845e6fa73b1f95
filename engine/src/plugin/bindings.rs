//! Host bindings, one module per interface version (`sdk/wit/v<version>/`).
//! Generated code; only `instance.rs` and `host_api.rs` touch it.

#![allow(clippy::unwrap_used)]

pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit/v0.1.0",
        world: "step",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit/v0.2.0",
        world: "pipe-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}
