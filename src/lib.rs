//! arborist: a service supervisor daemon. The binary (`src/main.rs`) only dispatches the
//! command line; everything else lives here, so that benchmarks can reach the pure layers.
//!
//! Data flows one way: `config` (bytes to a validated tree) → `plan` and `diff` (pure
//! meaning) → `supervisor`, `process`, `control` (the runtime and its effects) → `report` and
//! `status` (what an operator reads).

pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod diff;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod process;
pub mod report;
pub mod secrets;
pub mod signals;
pub mod status;
pub mod supervisor;
pub mod unit;
