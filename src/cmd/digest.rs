//! `schemagate digest`: write the build-time digest file (`digest.rs` says what it holds
//! and what trusts it).

use std::path::Path;

use super::Outcome;
use crate::digest;
use crate::error::Result;
use crate::source::Source;

/// `schemagate digest`: read the source, write its digest file, say what it holds.
pub fn run(dir: &Path) -> Result<Outcome> {
    let source = Source::load(dir)?;
    let path = digest::write(&source)?;
    let digest = source.digest();
    outln!("{digest}  {}", path.display());
    tracing::info!(
        "wrote {}: schema version {}, {} migration(s), digest {digest}",
        path.display(),
        source.version(),
        source.ups.len()
    );
    Ok(Outcome {
        version: Some(source.version()),
        applied: None,
        message: format!("wrote {}", path.display()),
        exec: None,
    })
}
