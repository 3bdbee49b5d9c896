//! Opening the files an operator or an image puts in front of schemagate: migrations, the
//! digest file, `sqlx.toml`, `--database-url-file`, other migrators' files. Each is opened
//! with `O_NONBLOCK`, so a FIFO in a file's place cannot hold the run in `open()` (where no
//! signal handler runs: SIGTERM would wait for a writer that never comes), and the opened
//! file must be a regular one, so a device such as `/dev/zero` is never read without end.
//! Small files are read up to a size cap besides.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was not read.
#[derive(Debug)]
pub enum Refused {
    /// The file system said no (missing, permissions, not UTF-8 ...).
    Io(std::io::Error),
    /// Not a regular file: what it is instead ("a FIFO (named pipe)", ...).
    NotRegular(&'static str),
    /// Larger than the reader's cap (in bytes).
    TooLarge(u64),
}

impl Refused {
    /// Whether the file is simply not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Refused::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Io(e) => write!(f, "{e}"),
            Refused::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            Refused::TooLarge(cap) => write!(f, "it is larger than {cap} bytes"),
        }
    }
}

/// Open `path` for reading, following symlinks; refused unless what was opened is a regular
/// file (decided on the open file, so a file swapped after a directory listing is caught).
/// Returns the file and what `fstat` said of it.
pub fn open(path: &Path) -> Result<(File, Metadata), Refused> {
    let file = File::options()
        .read(true)
        // Opening a FIFO for reading blocks until a writer opens it, unless O_NONBLOCK;
        // O_NOCTTY: a terminal device must never become a PID 1's controlling terminal.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(Refused::Io)?;
    let meta = file.metadata().map_err(Refused::Io)?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok((file, meta));
    }
    // Not a file: `special` names all but a directory.
    Err(Refused::NotRegular(special(kind).unwrap_or("a directory")))
}

/// What a directory entry is, when it is neither a regular file nor a directory (after
/// following a symlink): `None` for those two.
pub fn special(kind: std::fs::FileType) -> Option<&'static str> {
    if kind.is_file() || kind.is_dir() {
        None
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// The whole of a small regular file as UTF-8 text, refused beyond `cap` bytes (read no
/// further than that, whatever its size says: a file may grow while it is read).
pub fn read_small(path: &Path, cap: u64) -> Result<String, Refused> {
    let (file, meta) = open(path)?;
    let size = meta.len();
    if size > cap {
        return Err(Refused::TooLarge(cap));
    }
    let mut text = String::with_capacity(size as usize);
    file.take(cap + 1)
        .read_to_string(&mut text)
        .map_err(Refused::Io)?;
    if text.len() as u64 > cap {
        return Err(Refused::TooLarge(cap));
    }
    Ok(text)
}

/// The whole of a regular file, of any size, as bytes (sized once from the open file).
pub fn read_all(path: &Path) -> Result<Vec<u8>, Refused> {
    let (mut file, meta) = open(path)?;
    // One byte more than the size: the read that finds the end needs no new allocation.
    let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
    file.read_to_end(&mut bytes).map_err(Refused::Io)?;
    Ok(bytes)
}

/// The whole of a regular file, of any size, as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String, Refused> {
    String::from_utf8(read_all(path)?).map_err(|e| {
        Refused::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not valid UTF-8 (at byte offset {})",
                e.utf8_error().valid_up_to()
            ),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("schemagate-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = open(&fifo).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is a FIFO (named pipe), not a regular file"
        );
        let e = read_small(Path::new("/dev/zero"), 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is a character device, not a regular file"
        );
        std::fs::write(dir.join("big"), "0123456789x").unwrap();
        assert!(matches!(
            read_small(&dir.join("big"), 10),
            Err(Refused::TooLarge(10))
        ));
        assert_eq!(read_small(&dir.join("big"), 11).unwrap(), "0123456789x");
        assert!(
            read_small(&dir.join("missing"), 10)
                .unwrap_err()
                .is_not_found()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
