//! End-to-end tests: the real `pipe` binary in temporary repositories.

#[path = "../support/mod.rs"]
mod support;

mod affected;
mod approvals;
mod cache;
mod cache_attacks;
mod cancel;
mod containers;
mod deploy;
mod deploy_scenarios;
mod deploy_trust;
mod discovery;
mod examples;
mod includes;
mod injection;
mod limits;
mod plugins;
mod progressive;
mod records;
mod report;
mod sandbox;
mod scheduling;
mod secrets;
mod tools;
mod watch;
mod watch_trust;
