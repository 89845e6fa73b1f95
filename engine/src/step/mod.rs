//! What every step kind shares, below the scheduler and the executors: how an
//! attempt ends ([`Exit`]), the step's log, its outputs, secret masking, and
//! process groups. `run/` (the scheduler and most executors) and `plugin/` (the
//! wasmtime host) both build on this; nothing here knows either of them.

mod exit;
pub mod log;
pub mod mask;
pub mod outputs;
pub mod proc;
pub mod process_group;

pub use exit::Exit;
pub use log::StepLog;
pub use mask::Masker;
pub use process_group::ProcessGroup;
