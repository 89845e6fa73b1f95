//! `pipe`: a declarative pipeline-as-code engine.
//!
//! Data flows one way: text ([`lang`]) -> model -> plan ([`plan`]) -> run ([`run`]),
//! with run records and persistent state in [`state`] and the commands in [`cli`].

pub mod cli;
pub mod lang;
pub mod plan;
pub mod run;
pub mod state;
