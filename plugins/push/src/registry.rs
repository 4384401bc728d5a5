//! The device registry: which device tokens belong to which household.
//!
//! Every push output sends an event only to the devices the registry lists
//! for the event's household, never to an address taken from the event
//! itself. That is what keeps households apart:
//!
//! - the household is read from one configured field and must be a JSON
//!   string equal, byte for byte, to a household in the registry (no
//!   trimming, no case folding, no patterns, no lists): a [`HouseholdId`] is
//!   only ever the exact text of one registry entry;
//! - the destination (device token, channel URI, ntfy topic, webhook URL) is
//!   only ever a registry entry's `token`; neither the tag nor any record
//!   field can name one;
//! - an event whose household is missing or unknown is refused (it goes to
//!   `errors`), it is never sent to "everyone".
//!
//! The registry is a JSON or CSV file (see `docs/plugins/push.md`), checked
//! for changes every `registry_reload` and re-read when its modification time
//! or size changed. A token a gateway reports as dead (APNs `Unregistered`,
//! FCM `UNREGISTERED`, WNS 410, ...) is retired: marked in the file (written
//! to a temporary file and renamed over it) and left out of every lookup from
//! then on. Outputs configured with the same file share one loaded registry,
//! so a token retired by one is at once unknown to the others.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value as Json};
use tracing::{info, warn};

/// Why the registry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read or written.
    #[error("device registry {path}: {source}")]
    Io {
        /// The registry file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file's content is not a valid registry.
    #[error("device registry {path}, {location}: {message}")]
    Invalid {
        /// The registry file.
        path: PathBuf,
        /// Where in it (`line 3`, `device 2`).
        location: String,
        /// What is wrong.
        message: String,
    },
}

/// The push services a device can be reached through; a registry entry names
/// one, and each output only looks at its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Apple Push Notification service (iPhone, iPad, Mac).
    Apns,
    /// Firebase Cloud Messaging (Android, web).
    Fcm,
    /// Windows Push Notification Services; the token is the channel URI.
    Wns,
    /// A household's own HTTP endpoint; the token is the URL.
    Webhook,
    /// An ntfy topic; the token is the topic name.
    Ntfy,
}

impl Platform {
    /// The name used in registry files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
            Platform::Wns => "wns",
            Platform::Webhook => "webhook",
            Platform::Ntfy => "ntfy",
        }
    }

    /// The platform a registry file names.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "apns" => Platform::Apns,
            "fcm" => Platform::Fcm,
            "wns" => Platform::Wns,
            "webhook" => Platform::Webhook,
            "ntfy" => Platform::Ntfy,
            _ => return None,
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A household as the registry names it. Only [`HouseholdId::parse`] makes
/// one, and it refuses text that could be mistaken for something wider than
/// one household (empty, control characters, surrounding spaces).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HouseholdId(Arc<str>);

impl HouseholdId {
    /// Checks `s` and wraps it.
    ///
    /// # Errors
    /// Empty text, text over 128 bytes, control characters or leading or
    /// trailing whitespace.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the household is empty".into());
        }
        if s.len() > 128 {
            return Err(format!("the household {s:.32?}… is longer than 128 bytes"));
        }
        if s.chars().any(char::is_control) || s.trim() != s {
            return Err(format!(
                "the household {s:?} has control characters or surrounding spaces"
            ));
        }
        Ok(Self(s.into()))
    }

    /// The household's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HouseholdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One device a notification can go to, as an output sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The device token (or channel URI, topic, URL): where to send.
    pub token: Arc<str>,
    /// The registry's name for the device, for logs.
    pub name: Option<Arc<str>>,
}

/// What the registry knows about one household on one platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No such household: the event goes to `errors`.
    UnknownHousehold,
    /// The household's live devices on the platform (possibly none).
    Devices(Vec<Target>),
}

#[derive(Debug, Clone)]
struct Entry {
    household: HouseholdId,
    platform: Platform,
    token: Arc<str>,
    name: Option<Arc<str>>,
    retired: Option<String>,
    /// The entry as read (JSON object), so a write-back keeps unknown fields.
    original: Map<String, Json>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

#[derive(Debug)]
struct State {
    entries: Vec<Entry>,
    /// Household → indices into `entries`.
    by_household: HashMap<HouseholdId, Vec<usize>>,
    /// What the file looked like when read: (modified, length).
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// A loaded device registry; share it with [`DeviceRegistry::open`].
#[derive(Debug)]
pub struct DeviceRegistry {
    path: PathBuf,
    format: Format,
    reload_every: Duration,
    state: RwLock<State>,
    /// Serialises write-backs so two retirements do not race on the file.
    writing: Mutex<()>,
}

fn shared() -> &'static Mutex<HashMap<PathBuf, Weak<DeviceRegistry>>> {
    static SHARED: OnceLock<Mutex<HashMap<PathBuf, Weak<DeviceRegistry>>>> = OnceLock::new();
    SHARED.get_or_init(Default::default)
}

impl DeviceRegistry {
    /// The registry in `path`, loaded once per process and shared by every
    /// output naming the same file (so retirements are seen by all).
    /// `reload_every` applies when this call loads it.
    ///
    /// # Errors
    /// An unreadable or invalid file, or an extension other than `.json` or
    /// `.csv`.
    pub fn open(path: &Path, reload_every: Duration) -> Result<Arc<Self>, RegistryError> {
        let key = std::fs::canonicalize(path).map_err(|source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut map = shared().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let registry = Arc::new(Self::load(&key, reload_every)?);
        map.insert(key, Arc::downgrade(&registry));
        Ok(registry)
    }

    /// Loads `path` without sharing it (tests, tools).
    ///
    /// # Errors
    /// As [`DeviceRegistry::open`].
    pub fn load(path: &Path, reload_every: Duration) -> Result<Self, RegistryError> {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("csv") => Format::Csv,
            _ => {
                return Err(RegistryError::Invalid {
                    path: path.to_path_buf(),
                    location: "file name".into(),
                    message: "the registry file must end in .json or .csv".into(),
                })
            }
        };
        let state = read_state(path, format)?;
        Ok(Self {
            path: path.to_path_buf(),
            format,
            reload_every,
            state: RwLock::new(state),
            writing: Mutex::new(()),
        })
    }

    /// The registry file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if `registry_reload` has passed since the last check
    /// and the file changed. A file that became invalid is logged and the
    /// previous contents kept: a bad edit must not stop every notification.
    pub fn maybe_reload(&self) {
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.checked.elapsed() < self.reload_every {
                return;
            }
        }
        self.reload_if_changed();
    }

    /// Re-reads the file now if it changed since it was read.
    pub fn reload_if_changed(&self) {
        let stamp = file_stamp(&self.path);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.checked = Instant::now();
        if stamp.is_some() && stamp == state.stamp {
            return;
        }
        match read_state(&self.path, self.format) {
            Ok(new) => {
                info!(registry = %self.path.display(), devices = new.entries.len(), "device registry reloaded");
                *state = new;
            }
            Err(e) => {
                warn!(error = %e, "device registry not reloaded; keeping the previous contents")
            }
        }
    }

    /// The live devices of `household` on `platform`.
    pub fn lookup(&self, household: &HouseholdId, platform: Platform) -> Lookup {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some(indices) = state.by_household.get(household) else {
            return Lookup::UnknownHousehold;
        };
        Lookup::Devices(
            indices
                .iter()
                .map(|&i| &state.entries[i])
                .filter(|e| e.platform == platform && e.retired.is_none())
                .map(|e| Target {
                    token: e.token.clone(),
                    name: e.name.clone(),
                })
                .collect(),
        )
    }

    /// Whether `token` on `platform` is retired (or not in the registry).
    pub fn is_live(&self, platform: Platform, token: &str) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .entries
            .iter()
            .any(|e| e.platform == platform && &*e.token == token && e.retired.is_none())
    }

    /// Marks `token` on `platform` retired with `reason` and writes the file
    /// back. Returns whether it was live.
    ///
    /// # Errors
    /// The file could not be written; the token is retired in memory anyway,
    /// so this process does not use it again.
    pub fn retire(
        &self,
        platform: Platform,
        token: &str,
        reason: &str,
    ) -> Result<bool, RegistryError> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        // Pick up edits made since the last read first, so writing the
        // retirement back does not undo them.
        self.reload_if_changed();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let text = format!("{reason} at {now}");
        let (changed, snapshot) = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let mut changed = false;
            for e in state.entries.iter_mut() {
                if e.platform == platform && &*e.token == token && e.retired.is_none() {
                    e.retired = Some(text.clone());
                    changed = true;
                }
            }
            (changed, state.entries.clone())
        };
        if !changed {
            return Ok(false);
        }
        info!(registry = %self.path.display(), %platform, token = %redact(token), reason, "device token retired");
        let bytes = match self.format {
            Format::Json => render_json(&snapshot),
            Format::Csv => render_csv(&snapshot),
        };
        let tmp = self.path.with_extension("ulog-tmp");
        let io = |source| RegistryError::Io {
            path: self.path.clone(),
            source,
        };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.stamp = file_stamp(&self.path);
        Ok(true)
    }
}

/// The first and last characters of a token, for logs: enough to tell two
/// apart, not enough to use one.
pub fn redact(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() <= 12 {
        return "…".into();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Registry rows as read: where each came from, and its fields.
type Rows = Vec<(String, Map<String, Json>)>;

fn read_state(path: &Path, format: Format) -> Result<State, RegistryError> {
    let stamp = file_stamp(path);
    let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |location: String, message: String| RegistryError::Invalid {
        path: path.to_path_buf(),
        location,
        message,
    };
    let rows: Rows = match format {
        Format::Json => parse_json(&text).map_err(|m| invalid("file".into(), m))?,
        Format::Csv => parse_csv(&text).map_err(|(l, m)| invalid(l, m))?,
    };
    let mut entries = Vec::with_capacity(rows.len());
    let mut by_household: HashMap<HouseholdId, Vec<usize>> = HashMap::new();
    for (location, row) in rows {
        let field = |k: &str| match row.get(k) {
            Some(Json::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(_)) => Ok(None),
            Some(other) => Err(invalid(
                location.clone(),
                format!("`{k}` must be a string, found {other}"),
            )),
        };
        let household = field("household")?
            .ok_or_else(|| invalid(location.clone(), "`household` is missing".into()))?;
        let household = HouseholdId::parse(&household).map_err(|m| invalid(location.clone(), m))?;
        let platform = field("platform")?
            .ok_or_else(|| invalid(location.clone(), "`platform` is missing".into()))?;
        let platform = Platform::parse(&platform).ok_or_else(|| {
            invalid(
                location.clone(),
                format!("unknown platform {platform:?} (apns, fcm, wns, webhook, ntfy)"),
            )
        })?;
        let token = field("token")?
            .ok_or_else(|| invalid(location.clone(), "`token` is missing".into()))?;
        if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid(
                location.clone(),
                "`token` has whitespace or control characters".into(),
            ));
        }
        let name = field("name")?.map(Arc::from);
        let retired = field("retired")?;
        by_household
            .entry(household.clone())
            .or_default()
            .push(entries.len());
        entries.push(Entry {
            household,
            platform,
            token: token.into(),
            name,
            retired,
            original: row,
        });
    }
    Ok(State {
        entries,
        by_household,
        stamp,
        checked: Instant::now(),
    })
}

fn parse_json(text: &str) -> Result<Rows, String> {
    let doc: Json = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let list = match doc {
        Json::Array(items) => items,
        Json::Object(mut o) => match o.remove("devices") {
            Some(Json::Array(items)) => items,
            _ => return Err("expected an array of devices or {\"devices\": [...]}".into()),
        },
        _ => return Err("expected an array of devices or {\"devices\": [...]}".into()),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Json::Object(o) => Ok((format!("device {}", i + 1), o)),
            other => Err(format!("device {} is not an object: {other}", i + 1)),
        })
        .collect()
}

const CSV_COLUMNS: [&str; 5] = ["household", "platform", "token", "name", "retired"];

/// A plain CSV: a header naming the columns, one device a line, no quoting
/// (tokens, topics and URLs have no commas; a quote is refused rather than
/// misread).
fn parse_csv(text: &str) -> Result<Rows, (String, String)> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    });
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let columns: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
    for c in &columns {
        if !CSV_COLUMNS.contains(&c.as_str()) {
            return Err((
                "line 1".into(),
                format!("unknown column {c:?} (household, platform, token, name, retired)"),
            ));
        }
    }
    let mut rows = Vec::new();
    for (n, line) in lines {
        let location = format!("line {}", n + 1);
        if line.contains('"') {
            return Err((location, "quoted CSV fields are not supported".into()));
        }
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() > columns.len() {
            return Err((
                location,
                format!("{} fields for {} columns", cells.len(), columns.len()),
            ));
        }
        let mut row = Map::new();
        for (c, v) in columns.iter().zip(cells) {
            row.insert(c.clone(), Json::String(v.trim().to_string()));
        }
        rows.push((location, row));
    }
    Ok(rows)
}

fn render_json(entries: &[Entry]) -> Vec<u8> {
    let devices: Vec<Json> = entries
        .iter()
        .map(|e| {
            let mut o = e.original.clone();
            if let Some(r) = &e.retired {
                o.insert("retired".into(), Json::String(r.clone()));
            }
            Json::Object(o)
        })
        .collect();
    let mut out =
        serde_json::to_vec_pretty(&serde_json::json!({ "devices": devices })).unwrap_or_default();
    out.push(b'\n');
    out
}

fn render_csv(entries: &[Entry]) -> Vec<u8> {
    let mut out = String::from("household,platform,token,name,retired\n");
    for e in entries {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            e.household,
            e.platform,
            e.token,
            e.name.as_deref().unwrap_or(""),
            e.retired.as_deref().unwrap_or("").replace(',', ";"),
        ));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hh(s: &str) -> HouseholdId {
        HouseholdId::parse(s).unwrap()
    }

    #[test]
    fn json_and_csv_load_and_retire_writes_back() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("devices.json");
        std::fs::write(
            &json,
            r#"{"devices":[
              {"household":"hh-0001","platform":"apns","token":"aaaa1111","name":"iphone","owner":"x"},
              {"household":"hh-0001","platform":"fcm","token":"bbbb2222"},
              {"household":"hh-0002","platform":"apns","token":"cccc3333","retired":"Unregistered at 1"}
            ]}"#,
        )
        .unwrap();
        let r = DeviceRegistry::load(&json, Duration::from_secs(30)).unwrap();
        let Lookup::Devices(d) = r.lookup(&hh("hh-0001"), Platform::Apns) else {
            panic!()
        };
        assert_eq!(&*d[0].token, "aaaa1111");
        assert_eq!(
            r.lookup(&hh("hh-0002"), Platform::Apns),
            Lookup::Devices(vec![])
        );
        assert_eq!(
            r.lookup(&hh("hh-0003"), Platform::Apns),
            Lookup::UnknownHousehold
        );
        assert!(r
            .retire(Platform::Apns, "aaaa1111", "BadDeviceToken")
            .unwrap());
        assert!(!r
            .retire(Platform::Apns, "aaaa1111", "BadDeviceToken")
            .unwrap());
        let again = DeviceRegistry::load(&json, Duration::from_secs(30)).unwrap();
        assert_eq!(
            again.lookup(&hh("hh-0001"), Platform::Apns),
            Lookup::Devices(vec![])
        );
        let text = std::fs::read_to_string(&json).unwrap();
        assert!(text.contains("\"owner\": \"x\""), "{text}");
        assert!(text.contains("BadDeviceToken at"), "{text}");

        let csv = dir.path().join("devices.csv");
        std::fs::write(
            &csv,
            "household,platform,token,name\nhh-0001,fcm,tok-1,pixel\n# comment\nhh-0001,ntfy,topic-1,\n",
        )
        .unwrap();
        let r = DeviceRegistry::load(&csv, Duration::from_secs(30)).unwrap();
        assert!(r.retire(Platform::Fcm, "tok-1", "UNREGISTERED").unwrap());
        let again = DeviceRegistry::load(&csv, Duration::from_secs(30)).unwrap();
        assert_eq!(
            again.lookup(&hh("hh-0001"), Platform::Fcm),
            Lookup::Devices(vec![])
        );
        assert!(again.is_live(Platform::Ntfy, "topic-1"));
    }

    #[test]
    fn bad_files_are_refused_with_a_location() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        std::fs::write(&p, r#"[{"household":"hh-1","platform":"sms","token":"t"}]"#).unwrap();
        let e = DeviceRegistry::load(&p, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("device 1") && e.contains("unknown platform"),
            "{e}"
        );
        std::fs::write(
            &p,
            r#"[{"household":" hh-1","platform":"fcm","token":"t"}]"#,
        )
        .unwrap();
        assert!(DeviceRegistry::load(&p, Duration::ZERO).is_err());
        assert!(HouseholdId::parse("").is_err());
        assert!(HouseholdId::parse("hh\n1").is_err());
    }

    #[test]
    fn reload_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        std::fs::write(
            &p,
            r#"[{"household":"hh-1","platform":"fcm","token":"t1"}]"#,
        )
        .unwrap();
        let r = DeviceRegistry::load(&p, Duration::ZERO).unwrap();
        std::fs::write(
            &p,
            r#"[{"household":"hh-1","platform":"fcm","token":"t1"},{"household":"hh-2","platform":"fcm","token":"t22"}]"#,
        )
        .unwrap();
        r.maybe_reload();
        assert!(matches!(r.lookup(&hh("hh-2"), Platform::Fcm), Lookup::Devices(d) if d.len() == 1));
        std::fs::write(&p, "not json").unwrap();
        r.maybe_reload();
        assert!(
            r.is_live(Platform::Fcm, "t22"),
            "a bad edit keeps the old contents"
        );
    }
}
