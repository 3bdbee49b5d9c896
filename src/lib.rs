//! schemagate as a library: every module, and `run`, which validates a parsed command line
//! into the command's config and runs it. The binary (`main.rs`) is the process's edge:
//! it parses the arguments, starts logging, and maps the outcome to the exit code and the
//! termination-log line. Every exit code is decided in `error.rs`; nothing calls
//! `process::exit`.

/// `println!` that never panics: a closed stdout (`schemagate status | head -1`) just ends
/// the output, as `stdout::print` does.
macro_rules! outln {
    () => { $crate::stdout::print("\n") };
    ($($t:tt)*) => { $crate::stdout::print(&format!("{}\n", format_args!($($t)*))) };
}

pub mod check;
pub mod child;
pub mod cli;
pub mod cmd;
pub mod completions;
pub mod config;
pub mod db;
pub mod digest;
pub mod error;
pub mod files;
pub mod formats;
pub mod http;
pub mod lock;
pub mod marker;
pub mod phase;
pub mod redact;
pub mod registry;
pub mod settings;
pub mod signals;
pub mod source;
pub mod sql;
pub mod sqlx_toml;
pub mod stdout;

use cli::Command;
use cmd::fleet::FleetConfig;
use cmd::{
    CheckConfig, HeartbeatConfig, MigrateConfig, Outcome, RollbackConfig, SmokeConfig, StampConfig,
    StatusConfig, WaitConfig,
};
use error::Error;
use signals::Signals;

/// Validate the command line into the command's config (config.rs), then run it.
pub async fn run(command: Command) -> Result<Outcome, Error> {
    let mut signals = Signals::install()
        .map_err(|e| Error::Failed(format!("cannot install signal handlers: {e}")))?;
    match command {
        // `migrate` handles signals itself: it must record the failure before it exits.
        Command::Migrate(args) => {
            cmd::migrate::run(&MigrateConfig::from_args(&args)?, signals).await
        }
        // The others just stop: nothing they do is half-done at a signal (a down migration
        // rolls back with its connection).
        Command::Wait(args) => {
            let cfg = WaitConfig::from_args(&args)?;
            let outcome = or_signal(cmd::wait::run(&cfg), &mut signals).await?;
            // `--release`: announce this instance, and with `-- CMD` keep it announced.
            cmd::heartbeat::after_wait(&cfg, outcome, signals).await
        }
        Command::Status(args) => {
            let cfg = StatusConfig::from_args(&args)?;
            or_signal(cmd::status::run(&cfg), &mut signals).await
        }
        Command::Rollback(args) => {
            let cfg = RollbackConfig::from_args(&args)?;
            or_signal(cmd::rollback::run(&cfg), &mut signals).await
        }
        Command::Stamp(args) => {
            let cfg = StampConfig::from_args(&args)?;
            or_signal(cmd::stamp::run(&cfg), &mut signals).await
        }
        // `check` handles signals itself: it must drop its scratch database first.
        Command::Check(args) => cmd::check::run(&CheckConfig::from_args(&args)?, signals).await,
        // `smoke` too: it must drop its scratch database.
        Command::Smoke(args) => cmd::smoke::run(&SmokeConfig::from_args(&args), signals).await,
        Command::Digest(args) => cmd::digest::run(&args.source),
        Command::Completions(args) => completions::completions(args.shell),
        Command::Man(args) => completions::man(args.dir.as_deref()),
        // `fleet` passes signals on to every target's run, which records them as `migrate`.
        Command::Fleet(args) => cmd::fleet::run(&FleetConfig::from_args(&args)?, signals).await,
        // `heartbeat` too: it removes its row before it exits.
        Command::Heartbeat(args) => {
            cmd::heartbeat::run(&HeartbeatConfig::from_args(&args)?, signals).await
        }
    }
}

/// Run `work` unless SIGINT or SIGTERM comes first.
async fn or_signal(
    work: impl Future<Output = Result<Outcome, Error>>,
    signals: &mut Signals,
) -> Result<Outcome, Error> {
    tokio::select! {
        r = work => r,
        sig = signals.recv() => Err(Error::Interrupted(sig)),
    }
}
