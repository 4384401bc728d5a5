//! The Forward protocol's event frames: decoding a byte stream into events,
//! and encoding batches for the output side.
//!
//! A frame is one msgpack array, in one of four modes (Forward Protocol
//! Specification v1):
//!
//! | mode | shape |
//! | --- | --- |
//! | Message | `[tag, time, record, option?]` |
//! | Forward | `[tag, [[time, record], ...], option?]` |
//! | PackedForward | `[tag, bin/str of concatenated [time, record], option?]` |
//! | CompressedPackedForward | PackedForward with option `compressed: "gzip"` (one or more gzip members) |
//!
//! `time` is integer seconds or the EventTime ext (type 0, 8 bytes: 32-bit
//! big-endian seconds, then nanoseconds). The option map may carry `size`
//! (number of events), `chunk` (an id the receiver acknowledges with
//! `{"ack": chunk}`) and `compressed`.
//!
//! [`FrameDecoder`] works incrementally on a [`BytesMut`] that a connection
//! keeps filling: complete frames are split off and decoded, a partial frame
//! stays until more bytes arrive, and anything that is not a forward frame is
//! an error. Its size limit is checked from the msgpack headers, before the
//! frame has arrived or anything is allocated.
//!
//! [`Encoder`] writes batches as PackedForward (optionally gzip-compressed) or
//! Forward frames with EventTime timestamps, as fluentd's `out_forward` does.

use std::io::{Read, Write};

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};
use ulog_engine::tag::TagError;
use ulog_engine::{Event, EventTime, Record, Tag};

use crate::msgpack::{self, Item, MsgpackError, Reader, Scan, Scanned};

/// fluentd's default port for the forward protocol.
pub const DEFAULT_PORT: u16 = 24224;

/// Default largest frame accepted (fluentd's `chunk_size_limit` is unset by
/// default; 8 MiB matches the size of fluentd's and Fluent Bit's chunks).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 << 20;

/// The msgpack ext type of fluentd's EventTime.
pub const EVENT_TIME_EXT: i8 = 0;

/// How large frames may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded frame; larger frames are refused as soon as their
    /// headers show it. This also caps what one connection buffers.
    pub max_frame_size: usize,
    /// Largest decompressed payload of a CompressedPackedForward frame
    /// (guards against gzip bombs).
    pub max_decompressed_size: usize,
}

impl Limits {
    /// Limits for frames of at most `max_frame_size` bytes; compressed
    /// payloads may expand to 16 times that.
    pub fn with_max_frame_size(max_frame_size: usize) -> Self {
        Self {
            max_frame_size,
            max_decompressed_size: max_frame_size.saturating_mul(16),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::with_max_frame_size(DEFAULT_MAX_FRAME_SIZE)
    }
}

/// The four carrier modes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `[tag, time, record, option?]`: one event.
    Message,
    /// `[tag, [[time, record], ...], option?]`.
    Forward,
    /// `[tag, bin, option?]` with concatenated msgpack entries.
    PackedForward,
    /// PackedForward whose entries are gzip-compressed.
    CompressedPackedForward,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The validated tag.
    pub tag: Tag,
    /// The events, in order (invalid entries left out, see `skipped`).
    pub events: Vec<Event>,
    /// The carrier mode.
    pub mode: Mode,
    /// The `chunk` option: the sender waits for `{"ack": chunk}`.
    pub chunk: Option<String>,
    /// The `size` option, when given (the sender's count of events).
    pub size_option: Option<u64>,
    /// Entries left out because they were not valid events (with
    /// `skip_invalid_event`).
    pub skipped: usize,
    /// Why the first skipped entry was invalid.
    pub first_skip_reason: Option<String>,
    /// Encoded size of the frame in bytes.
    pub encoded_len: usize,
}

/// Why frames could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not a forward frame: bad msgpack, wrong shape or types, bad gzip.
    /// The stream cannot be trusted past this point.
    #[error("malformed forward frame: {0}")]
    Malformed(String),
    /// A frame larger than [`Limits::max_frame_size`] (or that decompresses
    /// to more than [`Limits::max_decompressed_size`]).
    #[error("forward frame too large: at least {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Bytes known to be needed.
        size: u64,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// An entry is not a valid event and `skip_invalid_event` is off.
    #[error("invalid event in a forward frame: {0}")]
    InvalidEvent(String),
    /// The frame is well formed but its tag is not acceptable; the frame was
    /// consumed and the stream can go on. Its events are in `decoded`, for
    /// the `errors` label.
    #[error("forward frame with invalid tag {tag:?} ({error}); its {events} events are refused")]
    BadTag {
        /// The tag as sent (lossy UTF-8).
        tag: String,
        /// Why it was refused.
        error: TagError,
        /// How many events the frame held.
        events: usize,
        /// The frame's `chunk` option, so the sender can still be answered.
        chunk: Option<String>,
        /// The frame's events, decoded.
        decoded: Vec<Event>,
    },
}

impl DecodeError {
    /// Whether the stream must be closed: true for everything but
    /// [`DecodeError::BadTag`], after which the next frame can be read.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, DecodeError::BadTag { .. })
    }
}

impl From<MsgpackError> for DecodeError {
    fn from(e: MsgpackError) -> Self {
        match e {
            MsgpackError::TooLarge { size, limit } => DecodeError::TooLarge { size, limit },
            other => DecodeError::Malformed(other.to_string()),
        }
    }
}

/// Splits complete frames off a buffer and decodes them.
///
/// Keep one per connection: it remembers how far it scanned a partial frame.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    limits: Limits,
    skip_invalid_event: bool,
    text_records: bool,
    scan: Scan,
    need: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl FrameDecoder {
    /// A decoder with `limits` that skips invalid events.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            skip_invalid_event: true,
            text_records: true,
            scan: Scan::new(),
            need: 0,
        }
    }

    /// Whether entries that are not valid events (record not a map, time not
    /// a time) are skipped (`true`, the default) or fail the frame.
    pub fn skip_invalid_event(mut self, skip: bool) -> Self {
        self.skip_invalid_event = skip;
        self
    }

    /// Whether records come out as JSON text ([`Record::Raw`], the
    /// default: one buffer per frame, no allocation per field; outputs write
    /// the text as is and filters parse it on first access) or as parsed
    /// maps ([`Record::Map`]). Both hold the same data.
    pub fn text_records(mut self, text: bool) -> Self {
        self.text_records = text;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Decodes the next complete frame at the start of `buf` and removes its
    /// bytes. `Ok(None)` means more bytes are needed (nothing is removed).
    ///
    /// # Errors
    /// See [`DecodeError`]; after a fatal error the buffer's contents are
    /// undefined and the stream should be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        self.next_frame(buf)?
            .map(|bytes| self.decode_frame(bytes))
            .transpose()
    }

    /// Splits the next complete frame's bytes off `buf`, without decoding it.
    ///
    /// # Errors
    /// Invalid msgpack or a frame over the size limit.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if buf.is_empty() || buf.len() < self.need {
            return Ok(None);
        }
        match self.scan.scan(buf, self.limits.max_frame_size) {
            Ok(Scanned::Complete(n)) => {
                self.need = 0;
                Ok(Some(buf.split_to(n).freeze()))
            }
            Ok(Scanned::Incomplete { need }) => {
                self.need = need;
                Ok(None)
            }
            Err(e) => {
                self.scan.reset();
                self.need = 0;
                Err(e.into())
            }
        }
    }

    /// Bytes of a partial frame already received, for "connection closed
    /// mid-frame" reports.
    pub fn partial_progress(&self) -> usize {
        self.scan.progress()
    }

    /// Decodes one complete frame.
    ///
    /// # Errors
    /// See [`DecodeError`].
    pub fn decode_frame(&self, frame: Bytes) -> Result<Frame, DecodeError> {
        let mut r = Reader::new(&frame);
        let n = match r.item()? {
            Item::Array(n) => n,
            other => {
                let hint = if matches!(frame.first(), Some(b'{' | b'[')) {
                    " (JSON is not supported; send msgpack)"
                } else {
                    ""
                };
                return Err(DecodeError::Malformed(format!(
                    "a frame must be an array [tag, ...], got {}{hint}",
                    other.kind()
                )));
            }
        };
        if !(2..=4).contains(&n) {
            return Err(DecodeError::Malformed(format!(
                "a frame must have 2 to 4 elements, got {n}"
            )));
        }
        let tag_text = match r.item()? {
            Item::Str(s) => s,
            other => {
                return Err(DecodeError::Malformed(format!(
                    "the tag must be a string, got {}",
                    other.kind()
                )))
            }
        };
        let mut events = EventSink::new(self.skip_invalid_event, self.text_records);
        let second_at = r.position();
        let (mode, option) = match r.item()? {
            Item::Array(count) => {
                if n > 3 {
                    return Err(DecodeError::Malformed(format!(
                        "a Forward mode frame has 2 or 3 elements, got {n}"
                    )));
                }
                for _ in 0..count {
                    events.entry(&mut r)?;
                }
                let option = if n == 3 {
                    read_option(&mut r)?
                } else {
                    Options::default()
                };
                (Mode::Forward, option)
            }
            Item::Str(entries) | Item::Bin(entries) => {
                if n > 3 {
                    return Err(DecodeError::Malformed(format!(
                        "a PackedForward frame has 2 or 3 elements, got {n}"
                    )));
                }
                let option = if n == 3 {
                    read_option(&mut r)?
                } else {
                    Options::default()
                };
                let mode = match option.compressed.as_deref() {
                    None | Some("text") => {
                        events.packed(entries)?;
                        Mode::PackedForward
                    }
                    Some("gzip") => {
                        let plain = gunzip(entries, self.limits.max_decompressed_size)?;
                        events.packed(&plain)?;
                        Mode::CompressedPackedForward
                    }
                    Some(other) => {
                        return Err(DecodeError::Malformed(format!(
                            "unknown compression {other:?} (known: gzip, text)"
                        )))
                    }
                };
                (mode, option)
            }
            _ => {
                if n < 3 {
                    return Err(DecodeError::Malformed(
                        "a Message mode frame needs [tag, time, record]".into(),
                    ));
                }
                r.seek(second_at);
                events.time_and_record(&mut r)?;
                let option = if n == 4 {
                    read_option(&mut r)?
                } else {
                    Options::default()
                };
                (Mode::Message, option)
            }
        };
        if !r.is_empty() {
            return Err(DecodeError::Malformed(format!(
                "{} unexpected bytes after the frame",
                r.remaining()
            )));
        }
        let skipped = events.skipped;
        let first_reason = events.first_reason.take();
        let events = events.finish();
        let tag = match std::str::from_utf8(tag_text)
            .map_err(|_| TagError::BadChar {
                tag: msgpack::text(tag_text),
                ch: char::REPLACEMENT_CHARACTER,
                at: 0,
            })
            .and_then(Tag::parse)
        {
            Ok(t) => t,
            Err(error) => {
                return Err(DecodeError::BadTag {
                    tag: msgpack::text(tag_text),
                    error,
                    events: events.len() + skipped,
                    chunk: option.chunk,
                    decoded: events,
                })
            }
        };
        Ok(Frame {
            tag,
            events,
            mode,
            chunk: option.chunk,
            size_option: option.size,
            skipped,
            first_skip_reason: first_reason,
            encoded_len: frame.len(),
        })
    }
}

/// Decodes every complete frame in `buf` with default limits, grouped by tag
/// in order of first appearance; a partial frame at the end stays in `buf`.
///
/// A small convenience over [`FrameDecoder`] for benchmarks and tools. Frames
/// with invalid tags are dropped (use [`FrameDecoder`] to see them).
///
/// # Errors
/// The first fatal [`DecodeError`].
pub fn decode_frames(buf: &mut BytesMut) -> Result<Vec<(Tag, Vec<Event>)>, DecodeError> {
    let mut decoder = FrameDecoder::default();
    let mut out: Vec<(Tag, Vec<Event>)> = Vec::new();
    loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => push_grouped(&mut out, frame.tag, frame.events),
            Ok(None) => return Ok(out),
            Err(e) if !e.is_fatal() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Appends `events` under `tag` to `groups`, merging with an earlier group of
/// the same tag.
pub fn push_grouped(groups: &mut Vec<(Tag, Vec<Event>)>, tag: Tag, mut events: Vec<Event>) {
    if events.is_empty() {
        return;
    }
    // Consecutive frames usually share their tag.
    if let Some((last, existing)) = groups.last_mut() {
        if *last == tag {
            existing.append(&mut events);
            return;
        }
    }
    match groups.iter_mut().find(|(t, _)| *t == tag) {
        Some((_, existing)) => existing.append(&mut events),
        None => groups.push((tag, events)),
    }
}

#[derive(Default)]
struct Options {
    chunk: Option<String>,
    size: Option<u64>,
    compressed: Option<String>,
}

fn read_option(r: &mut Reader<'_>) -> Result<Options, DecodeError> {
    let mut o = Options::default();
    let n = match r.item()? {
        Item::Nil => return Ok(o),
        Item::Map(n) => n,
        other => {
            return Err(DecodeError::Malformed(format!(
                "the option must be a map, got {}",
                other.kind()
            )))
        }
    };
    for _ in 0..n {
        let key = match r.item()? {
            Item::Str(k) => k,
            other => {
                r.skip_rest(other)?;
                r.skip()?;
                continue;
            }
        };
        match key {
            b"chunk" => match r.item()? {
                Item::Str(s) | Item::Bin(s) => match std::str::from_utf8(s) {
                    Ok(s) => o.chunk = Some(s.to_owned()),
                    Err(_) => {
                        return Err(DecodeError::Malformed(
                            "the chunk option is not valid UTF-8".into(),
                        ))
                    }
                },
                Item::Nil => {}
                other => {
                    return Err(DecodeError::Malformed(format!(
                        "the chunk option must be a string, got {}",
                        other.kind()
                    )))
                }
            },
            b"size" => match r.item()? {
                Item::UInt(n) => o.size = Some(n),
                other => r.skip_rest(other)?,
            },
            b"compressed" => match r.item()? {
                Item::Str(s) => o.compressed = Some(msgpack::text(s)),
                Item::Nil => {}
                other => {
                    return Err(DecodeError::Malformed(format!(
                        "the compressed option must be a string, got {}",
                        other.kind()
                    )))
                }
            },
            // fluent_signal, and whatever future senders add.
            _ => r.skip()?,
        }
    }
    Ok(o)
}

/// Collects the events of one frame, skipping or refusing invalid ones.
struct EventSink {
    skip_invalid: bool,
    /// Records as JSON text, all in `text`; `spans` locates each.
    text: Option<Vec<u8>>,
    spans: Vec<(EventTime, usize, usize)>,
    events: Vec<Event>,
    skipped: usize,
    first_reason: Option<String>,
    now: Option<EventTime>,
}

impl EventSink {
    fn new(skip_invalid: bool, text: bool) -> Self {
        Self {
            skip_invalid,
            text: text.then(Vec::new),
            spans: Vec::new(),
            events: Vec::new(),
            skipped: 0,
            first_reason: None,
            now: None,
        }
    }

    /// The events, each raw record a slice of one shared buffer.
    fn finish(self) -> Vec<Event> {
        match self.text {
            None => self.events,
            Some(text) => {
                let text = Bytes::from(text);
                self.spans
                    .into_iter()
                    .map(|(time, a, b)| Event::new(time, Record::Raw(text.slice(a..b))))
                    .collect()
            }
        }
    }

    fn invalid(&mut self, reason: String) -> Result<(), DecodeError> {
        if !self.skip_invalid {
            return Err(DecodeError::InvalidEvent(reason));
        }
        self.skipped += 1;
        if self.first_reason.is_none() {
            self.first_reason = Some(reason);
        }
        Ok(())
    }

    fn now(&mut self) -> EventTime {
        *self.now.get_or_insert_with(EventTime::now)
    }

    /// One `[time, record]` entry (extra elements are ignored).
    fn entry(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        match r.item()? {
            Item::Array(n) if n >= 2 => {
                self.time_and_record(r)?;
                for _ in 2..n {
                    r.skip()?;
                }
                Ok(())
            }
            other => {
                r.skip_rest(other)?;
                self.invalid(format!(
                    "an entry must be an array [time, record], got {}",
                    match other {
                        Item::Array(n) => format!("an array of {n}"),
                        o => o.kind().to_string(),
                    }
                ))
            }
        }
    }

    fn time_and_record(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let time = self.time(r)?;
        let n = match r.item()? {
            Item::Map(n) => n,
            other => {
                r.skip_rest(other)?;
                let reason = format!("the record must be a map, got {}", other.kind());
                return self.invalid(time.err().unwrap_or(reason));
            }
        };
        let time = match time {
            Ok(t) => t,
            Err(reason) => {
                r.skip_rest(Item::Map(n))?;
                return self.invalid(reason);
            }
        };
        match &mut self.text {
            Some(text) => {
                let start = text.len();
                r.map_text(n, 1, text)?;
                self.spans.push((time, start, text.len()));
            }
            None => {
                let map = r.map_entries(n, 1)?;
                self.events.push(Event::new(time, Record::Map(map)));
            }
        }
        Ok(())
    }

    /// Reads an event time. The outer error is a broken stream; the inner
    /// one an invalid time (the event is invalid, the stream fine).
    fn time(&mut self, r: &mut Reader<'_>) -> Result<Result<EventTime, String>, DecodeError> {
        let item = r.item()?;
        Ok(match item {
            // Fluent Bit 2's [[time, metadata], record] form: use the time.
            Item::Array(2) => {
                let inner = r.item()?;
                let t = match inner {
                    Item::Array(_) | Item::Map(_) => {
                        r.skip_rest(inner)?;
                        Err(format!(
                            "the time must be an integer or EventTime, got {}",
                            inner.kind()
                        ))
                    }
                    scalar => self.scalar_time(scalar),
                };
                r.skip()?; // the metadata
                t
            }
            Item::Array(_) | Item::Map(_) => {
                r.skip_rest(item)?;
                Err(format!(
                    "the time must be an integer or EventTime, got {}",
                    item.kind()
                ))
            }
            scalar => self.scalar_time(scalar),
        })
    }

    /// A time from a scalar. As in fluentd, a time whose whole seconds are
    /// 0 (an unset time) means "now".
    fn scalar_time(&mut self, item: Item<'_>) -> Result<EventTime, String> {
        let t = match item {
            Item::Nil => EventTime::from_unix_nanos(0),
            Item::UInt(s) => EventTime::from_secs_nanos(i64::try_from(s).unwrap_or(i64::MAX), 0),
            Item::Int(s) => EventTime::from_secs_nanos(s, 0),
            Item::F32(f) if f.is_finite() => EventTime::from_secs_f64(f64::from(f)),
            Item::F64(f) if f.is_finite() => EventTime::from_secs_f64(f),
            Item::Ext(EVENT_TIME_EXT, data) => event_time_from_ext(data)?,
            Item::Ext(ty, _) => {
                return Err(format!(
                    "the time is an ext value of type {ty}; only EventTime (type 0) is known"
                ))
            }
            other => {
                return Err(format!(
                    "the time must be an integer or EventTime, got {}",
                    other.kind()
                ))
            }
        };
        Ok(if t.secs() == 0 { self.now() } else { t })
    }

    /// Every entry of a PackedForward payload.
    fn packed(&mut self, entries: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader::new(entries);
        while !r.is_empty() {
            let at = r.position();
            self.entry(&mut r).map_err(|e| match e {
                DecodeError::Malformed(m) => DecodeError::Malformed(format!(
                    "packed entries broken at byte {at} of {}: {m}",
                    entries.len()
                )),
                other => other,
            })?;
        }
        Ok(())
    }
}

/// Decodes the 8 data bytes of an EventTime ext.
///
/// # Errors
/// A length other than 8, or nanoseconds of a second or more.
pub fn event_time_from_ext(data: &[u8]) -> Result<EventTime, String> {
    let Ok(bytes) = <[u8; 8]>::try_from(data) else {
        return Err(format!(
            "an EventTime ext must hold 8 bytes, got {}",
            data.len()
        ));
    };
    let secs = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let nanos = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if nanos >= 1_000_000_000 {
        return Err(format!("EventTime nanoseconds out of range: {nanos}"));
    }
    Ok(EventTime::from_secs_nanos(i64::from(secs), nanos))
}

/// Inflates one or more concatenated gzip members, up to `limit` bytes.
fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let decoder = flate2::read::MultiGzDecoder::new(data);
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            DecodeError::Malformed(format!("bad gzip data in CompressedPackedForward: {e}"))
        })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge {
            size: out.len() as u64,
            limit,
        });
    }
    Ok(out)
}

/// How [`Encoder`] lays out a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodeMode {
    /// `[tag, bin(entries), option]`, what fluentd's out_forward sends.
    #[default]
    PackedForward,
    /// `[tag, [[time, record], ...], option]`.
    Forward,
}

/// Compression of PackedForward entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain msgpack.
    #[default]
    Text,
    /// gzip (CompressedPackedForward); implies PackedForward.
    Gzip,
}

/// Writes batches as forward frames, reusing its scratch buffers.
#[derive(Debug, Default)]
pub struct Encoder {
    mode: EncodeMode,
    compression: Compression,
    time_as_integer: bool,
    entries: Vec<u8>,
    compressed: Vec<u8>,
}

impl Encoder {
    /// An encoder for `mode` and `compression`.
    pub fn new(mode: EncodeMode, compression: Compression) -> Self {
        Self {
            mode,
            compression,
            ..Self::default()
        }
    }

    /// Send times as integer seconds instead of EventTime, for fluentd v0.12
    /// and older receivers (the nanoseconds are lost).
    pub fn time_as_integer(mut self, yes: bool) -> Self {
        self.time_as_integer = yes;
        self
    }

    /// Appends one frame holding `events` under `tag` to `out`, with the
    /// `chunk` option when given (the receiver then acknowledges it).
    pub fn encode(&mut self, tag: &str, events: &[Event], chunk: Option<&str>, out: &mut Vec<u8>) {
        self.encode_limited(tag, events, chunk, usize::MAX, out);
    }

    /// Like [`Encoder::encode`], but stops adding events once their encoded
    /// entries reach `max_entries_bytes` (before compression), so a large
    /// batch can be sent as several frames a receiver accepts. Returns how
    /// many events the frame holds: at least one when `events` is not empty.
    pub fn encode_limited(
        &mut self,
        tag: &str,
        events: &[Event],
        chunk: Option<&str>,
        max_entries_bytes: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        let mut entries = std::mem::take(&mut self.entries);
        entries.clear();
        let mut count = 0;
        for e in events {
            if count > 0 && entries.len() >= max_entries_bytes {
                break;
            }
            self.write_entry(&mut entries, e);
            count += 1;
        }
        let gzip = self.compression == Compression::Gzip;
        let packed = self.mode == EncodeMode::PackedForward || gzip;
        if !packed {
            let _ = rmp::encode::write_array_len(out, if chunk.is_some() { 3 } else { 2 });
            let _ = rmp::encode::write_str(out, tag);
            let _ = rmp::encode::write_array_len(out, count as u32);
            out.extend_from_slice(&entries);
            if let Some(chunk) = chunk {
                let _ = rmp::encode::write_map_len(out, 1);
                let _ = rmp::encode::write_str(out, "chunk");
                let _ = rmp::encode::write_str(out, chunk);
            }
            self.entries = entries;
            return count;
        }
        let _ = rmp::encode::write_array_len(out, 3);
        let _ = rmp::encode::write_str(out, tag);
        if gzip {
            let mut z = std::mem::take(&mut self.compressed);
            z.clear();
            let mut enc = flate2::write::GzEncoder::new(z, flate2::Compression::fast());
            // Writing into a Vec cannot fail.
            let _ = enc.write_all(&entries);
            let z = enc.finish().unwrap_or_default();
            let _ = rmp::encode::write_bin(out, &z);
            self.compressed = z;
        } else {
            let _ = rmp::encode::write_bin(out, &entries);
        }
        let fields = 1 + u32::from(chunk.is_some()) + u32::from(gzip);
        let _ = rmp::encode::write_map_len(out, fields);
        let _ = rmp::encode::write_str(out, "size");
        let _ = rmp::encode::write_uint(out, count as u64);
        if let Some(chunk) = chunk {
            let _ = rmp::encode::write_str(out, "chunk");
            let _ = rmp::encode::write_str(out, chunk);
        }
        if gzip {
            let _ = rmp::encode::write_str(out, "compressed");
            let _ = rmp::encode::write_str(out, "gzip");
        }
        self.entries = entries;
        count
    }

    fn write_entry(&self, out: &mut Vec<u8>, e: &Event) {
        let _ = rmp::encode::write_array_len(out, 2);
        if self.time_as_integer {
            let _ = rmp::encode::write_sint(out, e.time.secs());
        } else {
            write_event_time(out, e.time);
        }
        write_record(out, &e.record);
    }
}

/// Appends `time` as an EventTime ext (or integer seconds when it does not
/// fit the ext's 32-bit seconds, before 1970 or after 2106).
pub fn write_event_time(out: &mut Vec<u8>, time: EventTime) {
    match u32::try_from(time.secs()) {
        Ok(secs) => {
            out.extend_from_slice(&[0xd7, EVENT_TIME_EXT as u8]);
            out.extend_from_slice(&secs.to_be_bytes());
            out.extend_from_slice(&time.subsec_nanos().to_be_bytes());
        }
        Err(_) => {
            let _ = rmp::encode::write_sint(out, time.secs());
        }
    }
}

/// Appends a record as a msgpack map. Raw JSON records are transcoded
/// straight from their text, without building a map.
pub fn write_record(out: &mut Vec<u8>, record: &Record) {
    match record {
        Record::Map(map) => ulog_parsers::msgpack::write_map(out, map),
        Record::Raw(bytes) => {
            let start = out.len();
            if crate::transcode::json_to_msgpack(bytes, out).is_err() {
                // Raw records are validated JSON objects, so this is not
                // expected; fall back to the parsed map.
                out.truncate(start);
                ulog_parsers::msgpack::write_map(out, &record.to_map());
            }
        }
    }
}

/// Appends a Message mode frame `[tag, time, record, option?]`, what logging
/// libraries such as fluent-logger send.
pub fn encode_message(tag: &str, event: &Event, chunk: Option<&str>, out: &mut Vec<u8>) {
    let _ = rmp::encode::write_array_len(out, if chunk.is_some() { 4 } else { 3 });
    let _ = rmp::encode::write_str(out, tag);
    write_event_time(out, event.time);
    write_record(out, &event.record);
    if let Some(chunk) = chunk {
        let _ = rmp::encode::write_map_len(out, 1);
        let _ = rmp::encode::write_str(out, "chunk");
        let _ = rmp::encode::write_str(out, chunk);
    }
}

/// The acknowledgement `{"ack": chunk}` a receiver sends back.
pub fn encode_ack(chunk: &str, out: &mut Vec<u8>) {
    let _ = rmp::encode::write_map_len(out, 1);
    let _ = rmp::encode::write_str(out, "ack");
    let _ = rmp::encode::write_str(out, chunk);
}

/// Reads the chunk id out of an acknowledgement `{"ack": chunk}`.
///
/// # Errors
/// Anything other than a map with a string `ack`.
pub fn decode_ack(bytes: &[u8]) -> Result<String, String> {
    let mut r = Reader::new(bytes);
    let n = match r.item().map_err(|e| e.to_string())? {
        Item::Map(n) => n,
        Item::Array(_) => {
            let mut r = Reader::new(bytes);
            let _ = r.item();
            if let Ok(Item::Str(b"HELO")) = r.item() {
                return Err("the server sent HELO: it requires a shared_key handshake".into());
            }
            return Err("expected an ack map, got an array".into());
        }
        other => return Err(format!("expected an ack map, got {}", other.kind())),
    };
    for _ in 0..n {
        let key = r.item().map_err(|e| e.to_string())?;
        let value = r.item().map_err(|e| e.to_string())?;
        if key == Item::Str(b"ack") {
            return match value {
                Item::Str(s) | Item::Bin(s) => Ok(msgpack::text(s)),
                other => Err(format!("the ack must be a string, got {}", other.kind())),
            };
        }
        r.skip_rest(value).map_err(|e| e.to_string())?;
    }
    Err("the response has no `ack` field".into())
}

/// Reads the first complete msgpack value from `buf`, if there is one, with
/// its length: for the small control messages (HELO, PING, PONG, acks).
///
/// # Errors
/// Invalid msgpack or a value over `limit` bytes.
pub fn split_value(buf: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, MsgpackError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match Scan::new().scan(buf, limit)? {
        Scanned::Complete(n) => Ok(Some(buf.split_to(n).freeze())),
        Scanned::Incomplete { .. } => Ok(None),
    }
}

/// A JSON object as msgpack, for tests and tools that build frames by hand.
pub fn map_to_msgpack(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    ulog_parsers::msgpack::write_map(&mut out, map);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value as M;
    use serde_json::json;

    fn pack(v: &M) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn et(secs: u32, nanos: u32) -> M {
        let mut data = secs.to_be_bytes().to_vec();
        data.extend_from_slice(&nanos.to_be_bytes());
        M::Ext(0, data)
    }

    fn rec(k: &str, v: i64) -> M {
        M::Map(vec![(M::from(k), M::from(v))])
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let mut d = FrameDecoder::default();
        let mut out = Vec::new();
        while let Some(f) = d.decode(&mut buf)? {
            out.push(f);
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        Ok(out)
    }

    #[test]
    fn message_mode_with_integer_and_event_time() {
        let mut bytes = pack(&M::Array(vec![
            M::from("app.web"),
            M::from(1_700_000_000),
            rec("a", 1),
        ]));
        bytes.extend(pack(&M::Array(vec![
            M::from("app.web"),
            et(1_700_000_001, 123_456_789),
            rec("a", 2),
            M::Map(vec![(M::from("chunk"), M::from("abc"))]),
        ])));
        let frames = decode_all(&bytes).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].mode, Mode::Message);
        assert_eq!(frames[0].tag.as_str(), "app.web");
        assert_eq!(
            frames[0].events,
            vec![Event::new(
                EventTime::from_secs_nanos(1_700_000_000, 0),
                json!({"a": 1}).as_object().unwrap().clone()
            )]
        );
        assert_eq!(frames[0].chunk, None);
        assert_eq!(
            frames[1].events[0].time,
            EventTime::from_secs_nanos(1_700_000_001, 123_456_789)
        );
        assert_eq!(frames[1].chunk.as_deref(), Some("abc"));
    }

    #[test]
    fn forward_mode_keeps_order_and_options() {
        let bytes = pack(&M::Array(vec![
            M::from("t"),
            M::Array(vec![
                M::Array(vec![M::from(10), rec("i", 0)]),
                M::Array(vec![et(11, 5), rec("i", 1)]),
            ]),
            M::Map(vec![
                (M::from("chunk"), M::from("c1")),
                (M::from("size"), M::from(2)),
                (M::from("fluent_signal"), M::from(0)),
            ]),
        ]));
        let f = decode_all(&bytes).unwrap().remove(0);
        assert_eq!(f.mode, Mode::Forward);
        assert_eq!(f.events.len(), 2);
        assert_eq!(f.events[1].time, EventTime::from_secs_nanos(11, 5));
        assert_eq!(f.chunk.as_deref(), Some("c1"));
        assert_eq!(f.size_option, Some(2));
    }

    #[test]
    fn packed_and_compressed_packed_forward() {
        let mut entries = Vec::new();
        for i in 0..3 {
            entries.extend(pack(&M::Array(vec![
                et(100 + i, 0),
                rec("i", i64::from(i)),
            ])));
        }
        let packed = pack(&M::Array(vec![
            M::from("p"),
            M::Binary(entries.clone()),
            M::Map(vec![(M::from("size"), M::from(3))]),
        ]));
        let f = decode_all(&packed).unwrap().remove(0);
        assert_eq!(f.mode, Mode::PackedForward);
        assert_eq!(f.events.len(), 3);
        assert_eq!(f.events[2].record.to_map()["i"], json!(2));

        // str instead of bin (old senders), same result.
        let as_str = {
            let mut out = Vec::new();
            rmp::encode::write_array_len(&mut out, 2).unwrap();
            rmp::encode::write_str(&mut out, "p").unwrap();
            rmp::encode::write_str_len(&mut out, entries.len() as u32).unwrap();
            out.extend_from_slice(&entries);
            out
        };
        assert_eq!(decode_all(&as_str).unwrap()[0].events, f.events);

        // Two gzip members, concatenated.
        let (a, b) = entries.split_at(entries.len() / 2);
        let mut z = Vec::new();
        for part in [a, b] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(part).unwrap();
            z.extend(enc.finish().unwrap());
        }
        let compressed = pack(&M::Array(vec![
            M::from("p"),
            M::Binary(z),
            M::Map(vec![(M::from("compressed"), M::from("gzip"))]),
        ]));
        let g = decode_all(&compressed).unwrap().remove(0);
        assert_eq!(g.mode, Mode::CompressedPackedForward);
        assert_eq!(g.events, f.events);
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut bytes = Vec::new();
        let mut enc = Encoder::new(EncodeMode::PackedForward, Compression::Gzip);
        let events: Vec<Event> = (0..50)
            .map(|i| {
                Event::new(
                    EventTime::from_secs_nanos(1_700_000_000 + i, 7),
                    json!({"i": i, "msg": "hello"}).as_object().unwrap().clone(),
                )
            })
            .collect();
        enc.encode("a.b", &events, Some("ch"), &mut bytes);
        let mut plain = Encoder::new(EncodeMode::Forward, Compression::Text);
        plain.encode("c", &events[..3], None, &mut bytes);
        encode_message("d", &events[0], None, &mut bytes);
        let whole = decode_all(&bytes).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].events, events);
        assert_eq!(whole[0].chunk.as_deref(), Some("ch"));
        assert_eq!(whole[1].events, events[..3].to_vec());
        assert_eq!(whole[2].events, events[..1].to_vec());
        for step in [1usize, 2, 7, 100] {
            let mut d = FrameDecoder::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some(f) = d.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, whole, "split into pieces of {step}");
        }
    }

    #[test]
    fn raw_json_records_encode_like_maps() {
        let raw = Record::from_json_bytes(Bytes::from_static(
            br#"{"s":"x","n":-3,"f":2.5,"a":[1,{"b":null}],"t":true,"big":18446744073709551615}"#,
        ))
        .unwrap();
        let map = Record::Map(raw.to_map().into_owned());
        let mut a = Vec::new();
        write_record(&mut a, &raw);
        let mut b = Vec::new();
        write_record(&mut b, &map);
        let va = Reader::new(&a).json().unwrap();
        let vb = Reader::new(&b).json().unwrap();
        assert_eq!(va, vb);
        assert_eq!(va, Value::Object(map.to_map().into_owned()));
    }

    #[test]
    fn text_records_hold_what_map_records_hold() {
        let bytes = pack(&M::Array(vec![
            M::from("t"),
            M::Array(vec![
                M::Array(vec![M::from(1), sample_record()]),
                M::Array(vec![M::from(2), M::from("skipped")]),
                M::Array(vec![M::from(3), rec("z", -1)]),
            ]),
        ]));
        let text = FrameDecoder::default()
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .unwrap();
        let maps = FrameDecoder::default()
            .text_records(false)
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .unwrap();
        assert!(text
            .events
            .iter()
            .all(|e| matches!(e.record, Record::Raw(_))));
        assert!(maps
            .events
            .iter()
            .all(|e| matches!(e.record, Record::Map(_))));
        assert_eq!(text.events, maps.events);
        assert_eq!((text.skipped, maps.skipped), (1, 1));
        let mut out = Vec::new();
        text.events[1].record.write_json(&mut out);
        assert_eq!(out, br#"{"z":-1}"#);
    }

    fn sample_record() -> M {
        M::Map(vec![
            (M::from("s"), M::from("q\"uote")),
            (M::from("f"), M::F64(2.5)),
            // serde_json parses this 1 ULP off unless float_roundtrip is on.
            (M::from("g"), M::F64(-2.929_967_476_621_672_6e282)),
            (M::from("n"), M::Nil),
            (
                M::from(5),
                M::Array(vec![M::Boolean(true), M::Binary(b"b".to_vec())]),
            ),
            (
                M::from("m"),
                M::Map(vec![(M::from("x"), M::Ext(3, vec![1]))]),
            ),
        ])
    }

    #[test]
    fn invalid_events_are_skipped_or_refused() {
        let bytes = pack(&M::Array(vec![
            M::from("t"),
            M::Array(vec![
                M::Array(vec![M::from(1), M::from("not a map")]),
                M::Array(vec![M::Ext(0, vec![0; 4]), rec("bad", 1)]),
                M::Array(vec![M::from("time?"), rec("bad", 2)]),
                M::from(5),
                M::Array(vec![M::from(1), rec("ok", 1)]),
            ]),
        ]));
        let f = decode_all(&bytes).unwrap().remove(0);
        assert_eq!(f.events.len(), 1);
        assert_eq!(f.skipped, 4);
        assert!(f.first_skip_reason.unwrap().contains("must be a map"));
        let mut buf = BytesMut::from(&bytes[..]);
        let err = FrameDecoder::default()
            .skip_invalid_event(false)
            .decode(&mut buf)
            .unwrap_err();
        assert!(matches!(err, DecodeError::InvalidEvent(_)), "{err}");
    }

    #[test]
    fn bad_tags_are_reported_with_their_chunk_and_the_stream_goes_on() {
        let mut bytes = pack(&M::Array(vec![
            M::from("../etc"),
            M::from(1),
            rec("a", 1),
            M::Map(vec![(M::from("chunk"), M::from("k"))]),
        ]));
        bytes.extend(pack(&M::Array(vec![
            M::from("ok"),
            M::from(1),
            rec("a", 1),
        ])));
        let mut buf = BytesMut::from(&bytes[..]);
        let mut d = FrameDecoder::default();
        let err = d.decode(&mut buf).unwrap_err();
        assert!(!err.is_fatal());
        assert!(
            matches!(&err, DecodeError::BadTag { chunk: Some(c), events: 1, .. } if c == "k"),
            "{err:?}"
        );
        assert_eq!(d.decode(&mut buf).unwrap().unwrap().tag.as_str(), "ok");
    }

    #[test]
    fn oversized_frames_are_refused_before_they_arrive() {
        let big = pack(&M::Array(vec![
            M::from("t"),
            M::from(1),
            M::Map(vec![(M::from("m"), M::from("x".repeat(5000)))]),
        ]));
        let mut d = FrameDecoder::new(Limits::with_max_frame_size(1024));
        // Only the first 40 bytes have arrived: the str header already tells.
        let mut buf = BytesMut::from(&big[..40]);
        let err = d.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLarge { limit: 1024, .. }),
            "{err}"
        );
        assert!(err.is_fatal());
    }

    #[test]
    fn gzip_bombs_are_refused() {
        let zeros = vec![0u8; 1 << 20];
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&zeros).unwrap();
        let z = enc.finish().unwrap();
        let frame = pack(&M::Array(vec![
            M::from("t"),
            M::Binary(z),
            M::Map(vec![(M::from("compressed"), M::from("gzip"))]),
        ]));
        let mut d = FrameDecoder::new(Limits {
            max_frame_size: 1 << 20,
            max_decompressed_size: 64 << 10,
        });
        let err = d.decode(&mut BytesMut::from(&frame[..])).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn acks_round_trip() {
        let mut out = Vec::new();
        encode_ack("xyz", &mut out);
        assert_eq!(decode_ack(&out).unwrap(), "xyz");
        assert!(decode_ack(&pack(&M::from(1))).is_err());
        let helo = pack(&M::Array(vec![M::from("HELO"), M::Map(vec![])]));
        assert!(decode_ack(&helo).unwrap_err().contains("shared_key"));
    }

    #[test]
    fn decode_frames_groups_by_tag() {
        let mut bytes = Vec::new();
        for (tag, i) in [("a", 1), ("b", 2), ("a", 3)] {
            bytes.extend(pack(&M::Array(vec![M::from(tag), M::from(1), rec("i", i)])));
        }
        let partial = pack(&M::Array(vec![M::from("c"), M::from(1), rec("i", 4)]));
        bytes.extend_from_slice(&partial[..5]);
        let mut buf = BytesMut::from(&bytes[..]);
        let groups = decode_frames(&mut buf).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0.as_str(), "a");
        assert_eq!(groups[0].1.len(), 2);
        assert_eq!(buf.len(), 5);
    }

    #[test]
    fn event_time_edges() {
        assert!(event_time_from_ext(&[0; 7]).is_err());
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend(1_000_000_000u32.to_be_bytes());
        assert!(event_time_from_ext(&b).is_err());
        let mut out = Vec::new();
        write_event_time(&mut out, EventTime::from_secs_nanos(-5, 0));
        assert_eq!(Reader::new(&out).item().unwrap(), Item::Int(-5));
    }
}
