//! schemagate: parse the command line, start logging, run one subcommand (`schemagate::run`,
//! in lib.rs), and turn its outcome into the exit code and the termination-log line. Every
//! exit code is decided in `error.rs`; nothing below calls `process::exit`.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use schemagate::cli::{Cli, Command, LogFormat};
use schemagate::cmd::Outcome;
use schemagate::error::Error;
use schemagate::redact::{self, redact};
use schemagate::{run, stdout};

fn main() -> ExitCode {
    // Before anything can print: the passwords in the environment and on the command line.
    redact::register_environment();
    for arg in std::env::args().skip(1) {
        redact::register_secrets(&arg);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let mode = cli.command.mode();
    let (log_format, termination_log) = match (cli.command.connect(), &cli.command) {
        (Some(c), _) => (c.log_format, c.termination_log.clone()),
        (None, Command::Smoke(a)) => (a.log_format, None),
        (None, _) => (LogFormat::Text, None),
    };
    init_logging(log_format);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    let mut result = runtime.block_on(run(cli.command));
    // Do not wait for blocking tasks (a SQLite worker mid-statement) on the way out.
    runtime.shutdown_background();
    if let Ok(Outcome {
        exec: Some(command),
        ..
    }) = &result
    {
        // `wait -- CMD`: become the app. exec only returns on failure.
        let err = std::process::Command::new(&command[0])
            .args(&command[1..])
            .exec();
        result = Err(Error::Config(format!("cannot exec {}: {err}", command[0])));
    }
    match &result {
        Ok(outcome) => tracing::debug!("{}", redact(&outcome.message)),
        Err(e) => tracing::error!("{}", redact(&format!("{e:#}"))),
    }
    write_termination_log(termination_log.as_deref(), mode, &result);
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(e.exit_code()),
    }
}

/// clap's tip for an unknown flag, "to pass '--sorce' as a value, use '-- --sorce'", is
/// wrong wherever `--` starts another program's command line: say what `--` really does.
fn true_trailing_tip(text: &str, mode: &str) -> String {
    let after = match mode {
        "migrate" | "check" => "the migrator's own command line (`-- alembic upgrade head`)",
        "wait" => "the command to exec once ready (`-- ./server`)",
        _ => return text.to_owned(),
    };
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("tip: to pass '") && line.contains("use '-- ") {
                format!("  tip: everything after `--` is {after}; schemagate's flags go before it")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if text.ends_with('\n') { "\n" } else { "" }
}

/// clap refused the command line: print its message redacted (it may echo a stray URL),
/// record it in the termination log, and exit 2. `--help` and `--version` go to stdout.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let text = redact(&e.render().to_string());
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        stdout::print(&text);
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args().collect();
    let text = true_trailing_tip(&text, args.get(1).map_or("", String::as_str));
    eprint!("{text}");
    let mode = args
        .get(1)
        .map(String::as_str)
        .filter(|a| {
            [
                "migrate",
                "wait",
                "status",
                "rollback",
                "stamp",
                "smoke",
                "heartbeat",
                "fleet",
            ]
            .contains(a)
        })
        .unwrap_or("schemagate");
    let path = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--termination-log") {
            Some(v) if v.starts_with('=') => Some(PathBuf::from(&v[1..])),
            Some("") => args.get(i + 1).map(PathBuf::from),
            _ => None,
        })
        .or_else(|| {
            std::env::var_os("SCHEMAGATE_TERMINATION_LOG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
    let first_line = text.lines().next().unwrap_or("usage error").to_owned();
    let err = Error::Config(first_line.trim_start_matches("error: ").to_owned());
    write_termination_log(path.as_deref(), mode, &Err(err));
    ExitCode::from(2)
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // `target=level` directives, comma-separated (`info,sqlx=warn`): what an operator
    // sets; one that does not parse leaves the default.
    let filter: Targets = std::env::var("SCHEMAGATE_LOG")
        .ok()
        .map(|s| {
            // `info, sqlx=warn` as `info,sqlx=warn`: a target named " sqlx" matches nothing.
            let parts: Vec<&str> = s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect();
            parts.join(",")
        })
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| DEFAULT_LOG.parse().expect("the default filter parses"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| redact::RedactingStderr)
        .with_target(false);
    match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(fmt.with_ansi(false).with_filter(filter))
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .init(),
    }
}

const DEFAULT_LOG: &str = "info,sqlx=warn";

/// One JSON line for Kubernetes' `terminationMessagePath`, so `kubectl describe` says why.
fn write_termination_log(path: Option<&Path>, mode: &str, result: &Result<Outcome, Error>) {
    const DEFAULT: &str = "/dev/termination-log";
    let path: PathBuf = match path {
        Some(p) => p.to_owned(),
        None if Path::new(DEFAULT).exists() => PathBuf::from(DEFAULT),
        None => return,
    };
    let line = match result {
        Ok(o) => serde_json::json!({
            "mode": mode, "exit_code": 0, "result": "ok",
            "version": o.version, "applied": o.applied, "message": redact(&o.message),
        }),
        Err(e) => serde_json::json!({
            "mode": mode, "exit_code": e.exit_code(), "result": e.kind(),
            "message": redact(&format!("{e:#}")),
        }),
    };
    // O_NONBLOCK: a FIFO in its place with no reader fails the write instead of holding
    // the exit (after SIGTERM, too) until one comes.
    let written = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        tracing::warn!("cannot write the termination log {}: {e}", path.display());
    }
}
