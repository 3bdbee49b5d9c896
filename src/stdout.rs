//! Standard output that never panics: a closed pipe (`status | head -c1`) just ends the
//! output, where `println!` would panic. `outln!` (main.rs) prints through it.

/// Print to stdout; a closed pipe just ends the output.
pub fn print(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
