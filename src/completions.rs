//! `schemagate completions SHELL` and `schemagate man`: generated from the clap
//! definition, so they never fall behind a flag. At the edge, beside cli.rs.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, EXIT_CODES};
use crate::cmd::Outcome;
use crate::error::{Error, Result};

/// Print the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<Outcome> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "schemagate", &mut out);
    write_stdout(&out)?;
    Ok(done(format!("printed the {shell} completions")))
}

/// Print the man page, or with `dir`, write `schemagate.1` and one page per command
/// (`schemagate-migrate.1`, ...) there, as git names its pages.
pub fn man(dir: Option<&Path>) -> Result<Outcome> {
    // The exit codes get a section of their own, not clap_mangen's EXTRA.
    let mut cmd = Cli::command()
        .disable_help_subcommand(true)
        .after_help(None::<&str>)
        .after_long_help(None::<&str>);
    cmd.build();
    let top = page(&cmd, Some(EXIT_CODES))?;
    let Some(dir) = dir else {
        write_stdout(&top)?;
        return Ok(done("printed the man page".into()));
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    let mut pages = vec![("schemagate.1".to_owned(), top)];
    for sub in cmd.get_subcommands() {
        let name = format!("schemagate-{}", sub.get_name());
        pages.push((
            format!("{name}.1"),
            page(&sub.clone().display_name(name), None)?,
        ));
    }
    for (file, text) in pages {
        let path = dir.join(&file);
        std::fs::write(&path, text)
            .map_err(|e| Error::Failed(format!("cannot write {}: {e}", path.display())))?;
        outln!("{}", path.display());
    }
    Ok(done(format!("wrote the man pages to {}", dir.display())))
}

/// One page in roff; with `exit_codes`, an EXIT STATUS section before VERSION, its
/// table kept as written (`.nf`).
fn page(cmd: &clap::Command, exit_codes: Option<&str>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .map_err(|e| Error::Failed(format!("cannot render the man page: {e}")))?;
    let Some(codes) = exit_codes else {
        return Ok(out);
    };
    let mut section = clap_mangen::roff::Roff::new();
    section.control("SH", ["EXIT STATUS"]).control("nf", []);
    for line in codes.lines().skip_while(|l| l.ends_with(':')) {
        section.text([clap_mangen::roff::roman(line)]);
    }
    section.control("fi", []);
    let text = String::from_utf8_lossy(&out);
    let at = text.find(".SH VERSION").unwrap_or(text.len());
    Ok(format!("{}{}{}", &text[..at], section.to_roff(), &text[at..]).into_bytes())
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Error::Failed(format!("cannot write to stdout: {e}")))
}

fn done(message: String) -> Outcome {
    Outcome {
        version: None,
        applied: None,
        message,
        exec: None,
    }
}
