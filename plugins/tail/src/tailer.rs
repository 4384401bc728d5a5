//! One followed file: its open descriptor, how far it was read, how far its
//! lines were accepted by the pipeline, and the line/record assembly state.
//!
//! Reads use `pread` on a shared descriptor from a blocking thread, so a slow
//! disk never stalls the async runtime and the descriptor keeps working after
//! the file is renamed or deleted (which is how rotated files are finished).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ulog_engine::Tag;

use crate::lines::{LineSplitter, Piece};
use crate::multiline::Multiline;
use crate::pos_file::FileId;

/// Where to start reading a newly opened file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// From the first byte.
    Head,
    /// After the last complete line present now.
    End,
    /// From a recorded offset (from the start if the file is now shorter).
    Offset(u64),
}

/// A file opened by [`open_at`].
pub(crate) struct Opened {
    pub file: File,
    pub id: FileId,
    pub size: u64,
    pub offset: u64,
    /// The recorded offset was past the end: the file was truncated while
    /// ulog was not running, so it is read from the start.
    pub shrunk: bool,
}

/// How far back [`Start::End`] looks for the last newline, so a file found
/// at startup whose last line is still being written is read from the start
/// of that line rather than from its middle.
const END_SEARCH: u64 = 64 * 1024;

/// Opens `path` (blocking) and decides the starting offset.
pub(crate) fn open_at(path: &Path, start: Start) -> io::Result<Opened> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let size = meta.len();
    let id = FileId::of(&meta);
    let mut shrunk = false;
    let offset = match start {
        Start::Head => 0,
        Start::Offset(o) if o <= size => o,
        Start::Offset(_) => {
            shrunk = true;
            0
        }
        Start::End => {
            let from = size.saturating_sub(END_SEARCH);
            let mut tail = Vec::with_capacity((size - from) as usize);
            file.seek(SeekFrom::Start(from))?;
            (&mut file).take(size - from).read_to_end(&mut tail)?;
            match memchr::memrchr(b'\n', &tail) {
                Some(i) => from + i as u64 + 1,
                None if from == 0 => 0,
                None => size,
            }
        }
    };
    Ok(Opened {
        file,
        id,
        size,
        offset,
        shrunk,
    })
}

/// The state of one followed file.
pub(crate) struct Tailer {
    /// The path it was found at (used in tags, `path_key` and logs).
    pub path: PathBuf,
    /// The tag its events carry.
    pub tag: Tag,
    /// The `path_key` value, prepared once.
    pub path_value: Option<serde_json::Value>,
    file: Arc<File>,
    /// Which file this is.
    pub id: FileId,
    /// Lines being cut from what was read.
    pub splitter: LineSplitter,
    /// Multi-line record assembly, when configured.
    pub multiline: Option<Multiline>,
    /// Everything before this offset has been accepted by the pipeline (or
    /// deliberately skipped): the value the position database records.
    pub committed: u64,
    /// File size at the last check.
    pub size: u64,
    /// For a file rotated away: when to stop waiting for more data.
    pub deadline: Option<Instant>,
    /// The file was deleted: finish it as soon as it is read to the end.
    pub deleted: bool,
    /// The last read failed (and was warned about): warn again only after a
    /// read succeeded in between.
    pub read_failing: bool,
}

impl Tailer {
    /// A tailer for an opened file, reading from `opened.offset`.
    pub(crate) fn new(
        path: PathBuf,
        opened: Opened,
        tag: Tag,
        path_value: Option<serde_json::Value>,
        max_line: usize,
        multiline: Option<Multiline>,
    ) -> Self {
        Self {
            path,
            tag,
            path_value,
            file: Arc::new(opened.file),
            id: opened.id,
            splitter: LineSplitter::new(opened.offset, max_line),
            multiline,
            committed: opened.offset,
            size: opened.size,
            deadline: None,
            deleted: false,
            read_failing: false,
        }
    }

    /// The open descriptor, for checks made on a blocking thread.
    pub(crate) fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// True when everything up to the last known size has been read.
    pub(crate) fn at_eof(&self) -> bool {
        self.splitter.read_offset() >= self.size
    }

    /// The offset that may be recorded once everything handed out so far is
    /// accepted: nothing of an unfinished line or record is counted.
    pub(crate) fn commit_point(&self) -> u64 {
        let consumed = self.splitter.consumed_offset();
        match self.multiline.as_ref().and_then(Multiline::pending_start) {
            Some(start) => start.min(consumed),
            None => consumed,
        }
    }

    /// Reads up to `size` bytes at the read offset into the line buffer, on a
    /// blocking thread. Returns how many bytes were read (0 at end of file).
    pub(crate) async fn read_chunk(&mut self, size: usize) -> io::Result<usize> {
        let offset = self.splitter.read_offset();
        let mut buf = self.splitter.take_buffer();
        let file = self.file.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let old = buf.len();
            buf.resize(old + size, 0);
            let res = loop {
                match file.read_at(&mut buf[old..], offset) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            buf.truncate(old + *res.as_ref().unwrap_or(&0));
            (buf, res)
        })
        .await;
        match joined {
            Ok((buf, res)) => {
                self.splitter.put_buffer(buf);
                let n = res?;
                self.size = self.size.max(self.splitter.read_offset());
                Ok(n)
            }
            Err(e) => {
                // The buffer went with the failed task: read again from the
                // start of the unfinished line.
                let at = self.splitter.consumed_offset();
                self.splitter.reset(at);
                Err(io::Error::other(format!("read task failed: {e}")))
            }
        }
    }

    /// Complete lines read so far.
    pub(crate) fn take_pieces(&mut self) -> Vec<Piece> {
        self.splitter.take_pieces()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn start_positions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one\ntwo\nunfinished").unwrap();
        assert_eq!(open_at(&p, Start::Head).unwrap().offset, 0);
        assert_eq!(open_at(&p, Start::End).unwrap().offset, 8);
        assert_eq!(open_at(&p, Start::Offset(4)).unwrap().offset, 4);
        let o = open_at(&p, Start::Offset(400)).unwrap();
        assert!(o.shrunk);
        assert_eq!(o.offset, 0);
        std::fs::write(&p, b"no newline at all").unwrap();
        assert_eq!(open_at(&p, Start::End).unwrap().offset, 0);
        std::fs::write(&p, b"").unwrap();
        assert_eq!(open_at(&p, Start::End).unwrap().offset, 0);
        assert!(open_at(dir.path(), Start::Head).is_err());
    }

    #[tokio::test]
    async fn reads_follow_a_growing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut w = std::fs::File::create(&p).unwrap();
        w.write_all(b"a\nb").unwrap();
        let opened = open_at(&p, Start::Head).unwrap();
        let mut t = Tailer::new(p.clone(), opened, Tag::new_unchecked("t"), None, 100, None);
        assert_eq!(t.read_chunk(2).await.unwrap(), 2);
        assert_eq!(t.read_chunk(1024).await.unwrap(), 1);
        assert_eq!(t.read_chunk(1024).await.unwrap(), 0);
        assert_eq!(t.take_pieces().len(), 1);
        assert_eq!(t.commit_point(), 2);
        w.write_all(b"c\n").unwrap();
        assert_eq!(t.read_chunk(1024).await.unwrap(), 2);
        let p = t.take_pieces();
        assert!(matches!(&p[0], Piece::Line { bytes, .. } if &bytes[..] == b"bc"));
        assert_eq!(t.commit_point(), 5);
    }
}
