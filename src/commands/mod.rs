//! The stages as library functions: each reads its work from the catalog,
//! does it and returns a report. The binary parses options, calls one of
//! these and renders the report.

pub mod fetch;
pub mod plan;
pub mod snapshot;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;

use crate::progress::Progress;

/// What every command is given.
pub struct Context {
    pub archive: PathBuf,
    /// `--env`: an empty list means every env.
    pub envs: Vec<String>,
    pub runtime: tokio::runtime::Handle,
    pub progress: Arc<dyn Progress>,
}

impl Context {
    /// `--env` as a SQL parameter: a JSON array, or NULL for every env.
    /// Used as `(?N IS NULL OR env IN (SELECT value FROM json_each(?N)))`.
    pub fn env_param(&self) -> Option<String> {
        (!self.envs.is_empty()).then(|| serde_json::Value::from(self.envs.clone()).to_string())
    }
}

/// The SQL condition that keeps refs of the selected envs (`?1` is [`Context::env_param`]).
pub const ENV_FILTER: &str = "(?1 IS NULL OR env IN (SELECT value FROM json_each(?1)))";
