//! Reading a text file that may be hostile (a pipeline under review, what it
//! includes): only a regular file, refused unread past a size, and never read
//! further than that even if it grows while read.

use std::io::Read;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// A directory, a FIFO (which would block), a device.
    NotAFile,
    /// It holds this many bytes (or more).
    TooLarge(u64),
    NotUtf8,
}

/// The text of the regular file at `path`, of at most `max` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: opening a FIFO to read would wait for a writer, forever.
    // (It changes nothing for a regular file.)
    let file =
        std::fs::File::options().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile);
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_utf8_file_within_the_bound_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, "abcd").expect("write");
        assert_eq!(read_text(&file, 4).expect("read"), "abcd");
        assert!(matches!(read_text(&file, 3), Err(ReadError::TooLarge(4))));
        assert!(matches!(read_text(dir.path(), 4), Err(ReadError::NotAFile)));
        std::fs::write(&file, [0xff, 0xfe]).expect("write");
        assert!(matches!(read_text(&file, 4), Err(ReadError::NotUtf8)));
        // A FIFO with no writer: refused, not waited on.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(matches!(read_text(&fifo, 4), Err(ReadError::NotAFile)));
    }
}
