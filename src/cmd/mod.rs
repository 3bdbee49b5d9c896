//! One file per subcommand. Each takes a validated `Config` and returns an `Outcome` that
//! `main` turns into the exit code and the termination-log line.

pub mod migrate;
pub mod smoke;
pub mod status;
pub mod wait;

use serde::Serialize;

/// What a successful run did, for the termination log.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<usize>,
    pub message: String,
    /// `wait -- CMD`: the command to replace this process with, once ready.
    #[serde(skip)]
    pub exec: Option<Vec<String>>,
}
