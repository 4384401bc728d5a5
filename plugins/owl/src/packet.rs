//! OWL Intuition packets (XML) into typed records.
//!
//! Network OWL gateways send one XML document per UDP datagram. The root
//! element names the packet type (`electricity`, `solar`, `hot_water`,
//! `heating`, `weather`); firmware 1 packets have no `ver` attribute, later
//! firmware adds `<timestamp>`, firmware 2 wraps channels in `<channels>`,
//! adds `<property>`/`<tariff>`, and moves heating and hot water readings into
//! `<zones>`. This module turns every variant into one schema with SI units in
//! the field names (`power_w`, `energy_today_wh`, `temperature_c`,
//! `battery_mv`...), documented in `docs/plugins/owl.md`.
//!
//! Nothing is dropped: elements and attributes this parser does not know are
//! kept under `extra`, keyed by their path (`property/day/cost`,
//! `zone/conf@flags`).

use serde_json::{Map, Number, Value};

/// The largest packet accepted; real packets are under 2 KiB.
pub const MAX_PACKET: usize = 64 * 1024;

/// Why a datagram is not an OWL packet.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PacketError {
    /// The datagram is larger than [`MAX_PACKET`].
    #[error("packet of {0} bytes is larger than the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
    /// The bytes are not UTF-8 text.
    #[error("packet is not UTF-8 text (byte {0})")]
    NotUtf8(usize),
    /// The text is not well-formed XML (truncated, say).
    #[error("malformed XML: {0}")]
    Xml(String),
    /// Well-formed XML whose root is no OWL packet type.
    #[error("unknown packet type <{0}> (known: electricity, solar, hot_water, heating, weather)")]
    UnknownType(String),
    /// A value that should be a number is not.
    #[error("{path}: {text:?} is not a number")]
    NotANumber {
        /// Where in the packet.
        path: String,
        /// The text found.
        text: String,
    },
}

/// The packet types an OWL gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Mains electricity (CM160 / CMR180 sensors), per channel.
    Electricity,
    /// Solar PV generation and export.
    Solar,
    /// Hot water controller.
    HotWater,
    /// Heating controller zones.
    Heating,
    /// The gateway's local weather report.
    Weather,
}

impl PacketType {
    /// The name used in records and tags (the root element's name).
    pub fn name(self) -> &'static str {
        match self {
            PacketType::Electricity => "electricity",
            PacketType::Solar => "solar",
            PacketType::HotWater => "hot_water",
            PacketType::Heating => "heating",
            PacketType::Weather => "weather",
        }
    }

    fn from_root(name: &str) -> Option<Self> {
        Some(match name {
            "electricity" => PacketType::Electricity,
            "solar" => PacketType::Solar,
            "hot_water" => PacketType::HotWater,
            "heating" => PacketType::Heating,
            "weather" => PacketType::Weather,
            _ => return None,
        })
    }
}

/// One parsed packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Its type.
    pub kind: PacketType,
    /// The packet's own time in Unix seconds (`<timestamp>`), when it has one.
    pub timestamp: Option<i64>,
    /// The record, in the documented schema.
    pub record: Map<String, Value>,
}

/// Parses one datagram.
///
/// # Errors
/// [`PacketError`] saying what is wrong; never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<Packet, PacketError> {
    if bytes.len() > MAX_PACKET {
        return Err(PacketError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| PacketError::NotUtf8(e.valid_up_to()))?;
    let doc =
        roxmltree::Document::parse(text.trim()).map_err(|e| PacketError::Xml(e.to_string()))?;
    let root = doc.root_element();
    let name = root.tag_name().name();
    let kind = PacketType::from_root(name).ok_or_else(|| PacketError::UnknownType(name.into()))?;
    let mut p = Parser {
        record: Map::new(),
        extra: Map::new(),
    };
    p.record.insert("packet".into(), kind.name().into());
    for a in root.attributes() {
        match a.name() {
            "id" => {
                p.record.insert("device_id".into(), a.value().into());
            }
            "ver" => {
                p.record.insert("firmware".into(), a.value().into());
            }
            "code" if kind == PacketType::Weather => {
                p.record
                    .insert("code".into(), p.int(&format!("{name}@code"), a.value())?);
            }
            other => p.keep(&format!("@{other}"), a.value()),
        }
    }
    if !p.record.contains_key("firmware") {
        p.record.insert("firmware".into(), "1".into());
    }
    let mut timestamp = None;
    let mut channels = Vec::new();
    let mut zones = Vec::new();
    for child in root.children().filter(|n| n.is_element()) {
        let tag = child.tag_name().name();
        match (kind, tag) {
            (_, "timestamp") => {
                let v = p.int("timestamp", text_of(child))?;
                timestamp = v.as_i64();
                p.record.insert("timestamp".into(), v);
            }
            (_, "signal") => p.signal(child, &mut None)?,
            (_, "battery") => p.battery(child, &mut None)?,
            (PacketType::Electricity, "chan") => channels.push(p.channel(child)?),
            (PacketType::Electricity, "channels") => {
                for c in child.children().filter(|n| n.is_element()) {
                    if c.tag_name().name() == "chan" {
                        channels.push(p.channel(c)?);
                    } else {
                        p.keep_tree("channels", c);
                    }
                }
            }
            (PacketType::Electricity, "property") => p.property(child)?,
            (PacketType::Solar, "current" | "day") => p.solar(child)?,
            (PacketType::HotWater | PacketType::Heating, "temperature") => {
                let mut zone = Map::new();
                p.temperature(child, &mut zone)?;
                zones.push(Value::Object(zone));
            }
            (PacketType::HotWater | PacketType::Heating, "zones") => {
                for z in child.children().filter(|n| n.is_element()) {
                    if z.tag_name().name() == "zone" {
                        zones.push(Value::Object(p.zone(z)?));
                    } else {
                        p.keep_tree("zones", z);
                    }
                }
            }
            (PacketType::Weather, "temperature") => {
                let v = p.num("temperature", text_of(child))?;
                p.record.insert("temperature_c".into(), v);
            }
            (PacketType::Weather, "text") => {
                p.record.insert("text".into(), text_of(child).into());
            }
            _ => p.keep_tree("", child),
        }
    }
    if kind == PacketType::Electricity {
        p.record.insert("channels".into(), Value::Array(channels));
    }
    if matches!(kind, PacketType::HotWater | PacketType::Heating) {
        p.record.insert("zones".into(), Value::Array(zones));
    }
    if !p.extra.is_empty() {
        let extra = std::mem::take(&mut p.extra);
        p.record.insert("extra".into(), Value::Object(extra));
    }
    Ok(Packet {
        kind,
        timestamp,
        record: p.record,
    })
}

fn text_of<'a>(node: roxmltree::Node<'a, '_>) -> &'a str {
    node.text().map(str::trim).unwrap_or("")
}

struct Parser {
    record: Map<String, Value>,
    extra: Map<String, Value>,
}

impl Parser {
    fn keep(&mut self, path: &str, text: &str) {
        self.extra.insert(path.into(), text.into());
    }

    /// Keeps an unknown element (its text, attributes and children) in `extra`.
    fn keep_tree(&mut self, parent: &str, node: roxmltree::Node) {
        let path = if parent.is_empty() {
            node.tag_name().name().to_string()
        } else {
            format!("{parent}/{}", node.tag_name().name())
        };
        for a in node.attributes() {
            self.keep(&format!("{path}@{}", a.name()), a.value());
        }
        let mut has_children = false;
        for c in node.children().filter(|n| n.is_element()) {
            has_children = true;
            self.keep_tree(&path, c);
        }
        let text = text_of(node);
        if !has_children && (!text.is_empty() || node.attributes().len() == 0) {
            self.keep(&path, text);
        }
    }

    fn num(&self, path: &str, text: &str) -> Result<Value, PacketError> {
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| PacketError::NotANumber {
                path: path.into(),
                text: text.into(),
            })
    }

    fn int(&self, path: &str, text: &str) -> Result<Value, PacketError> {
        text.parse::<i64>()
            .map(Value::from)
            .map_err(|_| PacketError::NotANumber {
                path: path.into(),
                text: text.into(),
            })
    }

    /// `<signal rssi='-71' lqi='127'/>`, into the record or a zone.
    fn signal(
        &mut self,
        node: roxmltree::Node,
        zone: &mut Option<&mut Map<String, Value>>,
    ) -> Result<(), PacketError> {
        for a in node.attributes() {
            let (key, v) = match a.name() {
                "rssi" => ("rssi_dbm", self.int("signal@rssi", a.value())?),
                "lqi" => ("lqi", self.int("signal@lqi", a.value())?),
                other => {
                    self.keep(&format!("signal@{other}"), a.value());
                    continue;
                }
            };
            match zone {
                Some(z) => z.insert(key.into(), v),
                None => self.record.insert(key.into(), v),
            };
        }
        Ok(())
    }

    /// `<battery level='100%'/>` (percent), `'2730mV'` or bare `'2240'` (mV).
    fn battery(
        &mut self,
        node: roxmltree::Node,
        zone: &mut Option<&mut Map<String, Value>>,
    ) -> Result<(), PacketError> {
        for a in node.attributes() {
            if a.name() != "level" {
                self.keep(&format!("battery@{}", a.name()), a.value());
                continue;
            }
            let level = a.value().trim();
            let (key, v) = if let Some(pct) = level.strip_suffix('%') {
                ("battery_pct", self.num("battery@level", pct.trim())?)
            } else {
                let mv = level
                    .strip_suffix("mV")
                    .or_else(|| level.strip_suffix("mv"))
                    .unwrap_or(level);
                ("battery_mv", self.num("battery@level", mv.trim())?)
            };
            let v = integral(v);
            match zone {
                Some(z) => z.insert(key.into(), v),
                None => self.record.insert(key.into(), v),
            };
        }
        Ok(())
    }

    /// `<chan id='0'><curr units='w'>483.00</curr><day units='wh'>10244.99</day></chan>`
    fn channel(&mut self, node: roxmltree::Node) -> Result<Value, PacketError> {
        let mut c = Map::new();
        for a in node.attributes() {
            if a.name() == "id" {
                c.insert("index".into(), self.int("chan@id", a.value())?);
            } else {
                self.keep(&format!("chan@{}", a.name()), a.value());
            }
        }
        for e in node.children().filter(|n| n.is_element()) {
            match e.tag_name().name() {
                "curr" => {
                    c.insert("power_w".into(), self.num("chan/curr", text_of(e))?);
                }
                "day" => {
                    c.insert("energy_today_wh".into(), self.num("chan/day", text_of(e))?);
                }
                _ => self.keep_tree("chan", e),
            }
        }
        Ok(Value::Object(c))
    }

    /// Firmware 2's whole-house figures and tariff.
    fn property(&mut self, node: roxmltree::Node) -> Result<(), PacketError> {
        for part in node.children().filter(|n| n.is_element()) {
            let section = part.tag_name().name();
            match section {
                "current" | "day" => {
                    for e in part.children().filter(|n| n.is_element()) {
                        let path = format!("property/{section}/{}", e.tag_name().name());
                        let key = match (section, e.tag_name().name()) {
                            ("current", "watts") => "total_power_w",
                            ("current", "cost") => "cost_now",
                            ("day", "wh") => "total_energy_today_wh",
                            ("day", "cost") => "cost_today",
                            _ => {
                                self.keep_tree(&format!("property/{section}"), e);
                                continue;
                            }
                        };
                        let v = self.num(&path, text_of(e))?;
                        self.record.insert(key.into(), v);
                    }
                }
                "tariff" => {
                    for a in part.attributes() {
                        if a.name() == "time" {
                            let v = self.int("tariff@time", a.value())?;
                            self.record.insert("tariff_time".into(), v);
                        } else {
                            self.keep(&format!("property/tariff@{}", a.name()), a.value());
                        }
                    }
                    for e in part.children().filter(|n| n.is_element()) {
                        let name = e.tag_name().name();
                        let path = format!("property/tariff/{name}");
                        let (key, v) = match name {
                            "curr_price" => ("tariff_price", self.num(&path, text_of(e))?),
                            "block_limit" => ("tariff_block_limit", self.int(&path, text_of(e))?),
                            "block_usage" => ("tariff_block_usage", self.int(&path, text_of(e))?),
                            "start" => ("tariff_start", self.int(&path, text_of(e))?),
                            _ => {
                                self.keep_tree("property/tariff", e);
                                continue;
                            }
                        };
                        self.record.insert(key.into(), v);
                    }
                }
                _ => self.keep_tree("property", part),
            }
        }
        Ok(())
    }

    /// `<current><generating>..` and `<day><generated>..` of a solar packet.
    fn solar(&mut self, node: roxmltree::Node) -> Result<(), PacketError> {
        let section = node.tag_name().name();
        for e in node.children().filter(|n| n.is_element()) {
            let key = match (section, e.tag_name().name()) {
                ("current", "generating") => "generating_w",
                ("current", "exporting") => "exporting_w",
                ("day", "generated") => "generated_today_wh",
                ("day", "exported") => "exported_today_wh",
                _ => {
                    self.keep_tree(section, e);
                    continue;
                }
            };
            let v = self.num(&format!("{section}/{}", e.tag_name().name()), text_of(e))?;
            self.record.insert(key.into(), v);
        }
        Ok(())
    }

    /// `<temperature until='..' zone='0'><current>..</current><required>..`
    fn temperature(
        &mut self,
        node: roxmltree::Node,
        zone: &mut Map<String, Value>,
    ) -> Result<(), PacketError> {
        for a in node.attributes() {
            let key = match a.name() {
                "until" => "until",
                "zone" => "zone",
                "state" => "state",
                "flags" => "flags",
                other => {
                    self.keep(&format!("temperature@{other}"), a.value());
                    continue;
                }
            };
            let v = self.int(&format!("temperature@{key}"), a.value())?;
            zone.insert(key.into(), v);
        }
        for e in node.children().filter(|n| n.is_element()) {
            let key = match e.tag_name().name() {
                "current" => "temperature_c",
                "required" => "required_c",
                "ambient" => "ambient_c",
                _ => {
                    self.keep_tree("temperature", e);
                    continue;
                }
            };
            let v = self.num(&format!("temperature/{}", e.tag_name().name()), text_of(e))?;
            zone.insert(key.into(), v);
        }
        Ok(())
    }

    /// Firmware 2's `<zone id='..' last='..'>` with its own signal and battery.
    fn zone(&mut self, node: roxmltree::Node) -> Result<Map<String, Value>, PacketError> {
        let mut z = Map::new();
        for a in node.attributes() {
            match a.name() {
                "id" => {
                    z.insert("zone_id".into(), a.value().into());
                }
                "last" => {
                    z.insert("last".into(), self.int("zone@last", a.value())?);
                }
                other => self.keep(&format!("zone@{other}"), a.value()),
            }
        }
        for e in node.children().filter(|n| n.is_element()) {
            match e.tag_name().name() {
                "signal" => self.signal(e, &mut Some(&mut z))?,
                "battery" => self.battery(e, &mut Some(&mut z))?,
                "temperature" => self.temperature(e, &mut z)?,
                "humidity" => {
                    z.insert(
                        "humidity_pct".into(),
                        self.num("zone/humidity", text_of(e))?,
                    );
                }
                "conf" => {
                    for a in e.attributes() {
                        if a.name() == "flags" {
                            z.insert("conf_flags".into(), self.int("conf@flags", a.value())?);
                        } else {
                            self.keep(&format!("zone/conf@{}", a.name()), a.value());
                        }
                    }
                }
                _ => self.keep_tree("zone", e),
            }
        }
        Ok(z)
    }
}

/// Millivolts and percentages are whole numbers on every firmware seen:
/// keep them as integers when they are.
fn integral(v: Value) -> Value {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => Value::from(f as i64),
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn battery_forms_all_become_numbers() {
        for (xml, key, want) in [
            (
                "<heating id='a'><battery level='2730mV'/></heating>",
                "battery_mv",
                json!(2730),
            ),
            (
                "<heating id='a'><battery level='100%'/></heating>",
                "battery_pct",
                json!(100),
            ),
            (
                "<solar id='a'><battery level=\"2240\"/></solar>",
                "battery_mv",
                json!(2240),
            ),
        ] {
            let p = parse(xml.as_bytes()).unwrap();
            assert_eq!(p.record[key], want, "{xml}");
        }
    }

    #[test]
    fn unknown_parts_are_kept_under_extra() {
        let p = parse(b"<solar id='a' site='roof'><current><generating units='w'>1</generating><inverter>on</inverter></current><note>hi</note></solar>").unwrap();
        assert_eq!(
            p.record["extra"],
            json!({"@site": "roof", "current/inverter": "on", "note": "hi"})
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(parse(b"<solar id='a'>"), Err(PacketError::Xml(_))));
        assert_eq!(
            parse(b"<gas id='a'/>"),
            Err(PacketError::UnknownType("gas".into()))
        );
        assert_eq!(parse(b"\xff\xfe"), Err(PacketError::NotUtf8(0)));
        assert_eq!(
            parse(b"<weather id='a'><temperature>warm</temperature></weather>"),
            Err(PacketError::NotANumber {
                path: "temperature".into(),
                text: "warm".into()
            })
        );
        assert_eq!(
            parse(&vec![b' '; MAX_PACKET + 1]),
            Err(PacketError::TooLarge(MAX_PACKET + 1))
        );
    }
}
