//! The snapshot file of `filter rule`: a header, the payload's length and
//! CRC-32, then the state as JSON; written so that a crash leaves the old
//! file or the new one, never a mix.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::KeyState;

/// The snapshot file's first bytes: format name and version.
const MAGIC: &[u8; 8] = b"ULRULE01";

/// What is snapshotted: everything a restart needs to go on exactly.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Snapshot {
    /// The rule's definition, so a snapshot of another rule is not applied.
    pub(super) fingerprint: String,
    pub(super) clock: i64,
    pub(super) last_sweep: i64,
    pub(super) keys: HashMap<String, KeyState>,
}

/// The snapshot file: `MAGIC`, the payload's length (u64 LE) and CRC-32
/// (u32 LE), then the payload (JSON). The length and checksum catch a torn
/// or damaged file even though the rename makes torn writes unlikely.
pub(super) fn encode(snap: &Snapshot) -> std::io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(snap)?;
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

pub(super) fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let header = MAGIC.len() + 12;
    if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a rule snapshot (bad header)".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[16..20]);
    let payload = &bytes[header..];
    if u64::try_from(payload.len()).ok() != Some(u64::from_le_bytes(len)) {
        return Err(format!(
            "length {} does not match the header's {}",
            payload.len(),
            u64::from_le_bytes(len)
        ));
    }
    if crc32fast::hash(payload) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(payload).map_err(|e| format!("bad payload: {e}"))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or
/// the new one: a temp file beside it, fsync, rename, fsync of the folder.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Makes the rename itself durable; not every platform can open a folder.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
