//! The position database: how far each followed file has been handed to the
//! pipeline, so a restart resumes where the last run stopped.
//!
//! It is a small text file a person can read and fix: two comment lines,
//! then one line per file with four fields separated by a tab: path, offset,
//! inode and device (`/var/log/app.log  48213  1835022  2049`).
//!
//! Bytes of the path that would break the line (`%`, tab, newline and other
//! control characters) are written as `%XX`. The file is replaced as a whole:
//! written to `<pos_file>.tmp`, flushed to disk, renamed over the old one and
//! the directory flushed, so a crash at any moment leaves either the old or
//! the new version, never a mix.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const HEADER: &str = "# ulog tail positions v1\n# path\toffset\tinode\tdevice\n";

/// Identifies a file independently of its name, so a renamed file is still
/// recognised and a new file at an old name is not mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The id of the file `meta` describes.
    pub(crate) fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One line of the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PosEntry {
    /// Where the file was (or is) found.
    pub path: PathBuf,
    /// Everything before this byte offset was accepted by the pipeline.
    pub offset: u64,
    /// Which file it is.
    pub id: FileId,
}

fn escape(path: &Path, out: &mut Vec<u8>) {
    for &b in path.as_os_str().as_bytes() {
        if b == b'%' || b < 0x20 || b == 0x7f {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

fn unescape(text: &[u8]) -> Option<PathBuf> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(PathBuf::from(OsStr::from_bytes(&out)))
}

/// Serialises `entries` in the database format.
pub(crate) fn render(entries: &[PosEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER.len() + entries.len() * 64);
    out.extend_from_slice(HEADER.as_bytes());
    for e in entries {
        escape(&e.path, &mut out);
        out.extend_from_slice(format!("\t{}\t{}\t{}\n", e.offset, e.id.ino, e.id.dev).as_bytes());
    }
    out
}

/// Reads the database text. Lines that cannot be understood are left out
/// and described in the second list (1-based line numbers), so one damaged
/// line costs only that file's position.
pub(crate) fn parse(text: &[u8]) -> (Vec<PosEntry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let fields: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
        let num = |b: &[u8]| std::str::from_utf8(b).ok()?.trim().parse::<u64>().ok();
        let parsed = match fields.as_slice() {
            [path, offset, ino, dev] => (|| {
                Some(PosEntry {
                    path: unescape(path)?,
                    offset: num(offset)?,
                    id: FileId {
                        ino: num(ino)?,
                        dev: num(dev)?,
                    },
                })
            })(),
            _ => None,
        };
        match parsed {
            Some(e) => entries.push(e),
            None => problems.push(format!(
                "line {}: expected path<TAB>offset<TAB>inode<TAB>device, found {:?}",
                n + 1,
                String::from_utf8_lossy(&line[..line.len().min(200)])
            )),
        }
    }
    (entries, problems)
}

/// Loads the database; a missing file is an empty database.
pub(crate) fn load(path: &Path) -> io::Result<(Vec<PosEntry>, Vec<String>)> {
    match fs::read(path) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), Vec::new())),
        Err(e) => Err(e),
    }
}

/// Replaces the database atomically and durably (see the module docs).
pub(crate) fn store(path: &Path, entries: &[PosEntry]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&render(entries))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    File::open(&dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, offset: u64) -> PosEntry {
        PosEntry {
            path: PathBuf::from(path),
            offset,
            id: FileId { dev: 2049, ino: 77 },
        }
    }

    #[test]
    fn round_trips_awkward_paths() {
        let weird = PathBuf::from(OsStr::from_bytes(b"/tmp/a\tb\n100%\xff.log"));
        let entries = vec![
            entry("/var/log/app.log", 12),
            PosEntry {
                path: weird,
                offset: u64::MAX,
                id: FileId { dev: 1, ino: 2 },
            },
        ];
        let text = render(&entries);
        assert!(text.starts_with(b"# ulog tail positions v1\n"));
        let line = text.split(|&b| b == b'\n').nth(3).unwrap();
        assert!(line.starts_with(b"/tmp/a%09b%0A100%25\xff.log\t"));
        let (back, problems) = parse(&text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(back, entries);
    }

    #[test]
    fn damaged_lines_are_reported_and_the_rest_kept() {
        let text = b"# header\n/a\t10\t1\t2\ngarbage\n/b\tten\t1\t2\n/c\t5\t3\n%zz\t1\t1\t1\n\n/d\t7\t4\t5\r\n";
        let (entries, problems) = parse(text);
        assert_eq!(
            entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>(),
            [PathBuf::from("/a"), PathBuf::from("/d")]
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("line 3:"), "{problems:?}");
    }

    #[test]
    fn store_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pos");
        assert_eq!(load(&p).unwrap().0, vec![]);
        store(&p, &[entry("/x", 1)]).unwrap();
        store(&p, &[entry("/x", 2), entry("/y", 3)]).unwrap();
        let (entries, problems) = load(&p).unwrap();
        assert!(problems.is_empty());
        assert_eq!(entries, vec![entry("/x", 2), entry("/y", 3)]);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("pos")]);
    }

    #[test]
    fn store_into_a_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/pos");
        assert!(store(&p, &[entry("/x", 1)]).is_err());
    }
}
