//! Every real packet in `shared/testdata/owl` parses into the documented
//! record, and variants of them (other quoting, declaration, reformatting,
//! truncation, garbage) parse the same or are refused with a reason.

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{json, Value};
use ulog_plugins_owl::packet::{parse, PacketType};

fn samples_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/owl");
    assert!(
        dir.is_dir(),
        "the OWL samples are missing: expected {} (shared/ beside the repository)",
        dir.display()
    );
    dir
}

fn sample(name: &str) -> String {
    std::fs::read_to_string(samples_dir().join(name)).unwrap()
}

fn record(name: &str) -> Value {
    let p = parse(sample(name).as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    Value::Object(p.record)
}

#[test]
fn every_sample_file_is_covered_by_a_test_here() {
    let this = include_str!("samples.rs");
    for entry in std::fs::read_dir(samples_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".xml") {
            assert!(
                this.matches(&format!("\"{name}\"")).count() >= 2,
                "{name} has no test of its own"
            );
        }
    }
}

#[test]
fn electricity_v1_official_doc() {
    let r = record("electricity_v1_official_doc.xml");
    assert_eq!(
        r,
        json!({
            "packet": "electricity", "device_id": "443719999999", "firmware": "1",
            "rssi_dbm": -71, "lqi": 127, "battery_pct": 100,
            "channels": [
                {"index": 0, "power_w": 483.0, "energy_today_wh": 10244.99},
                {"index": 1, "power_w": 0.0, "energy_today_wh": 0.0},
                {"index": 2, "power_w": 0.0, "energy_today_wh": 0.0},
            ]
        })
    );
}

#[test]
fn electricity_v1_timestamp_3chan() {
    let p = parse(sample("electricity_v1_timestamp_3chan.xml").as_bytes()).unwrap();
    assert_eq!(p.kind, PacketType::Electricity);
    assert_eq!(p.timestamp, Some(1789825304));
    let r = Value::Object(p.record);
    assert_eq!(r["timestamp"], 1789825304);
    assert_eq!(r["rssi_dbm"], -52);
    assert_eq!(r["lqi"], 13);
    assert_eq!(
        r["channels"][0],
        json!({"index": 0, "power_w": 12.5, "energy_today_wh": 1234.0})
    );
    assert_eq!(
        r["channels"][2],
        json!({"index": 2, "power_w": 300.25, "energy_today_wh": 5000.5})
    );
    assert!(r.get("extra").is_none(), "{r}");
}

#[test]
fn electricity_v2_6chan_property() {
    let r = record("electricity_v2_6chan_property.xml");
    assert_eq!(r["firmware"], "2.0");
    assert_eq!(r["channels"].as_array().unwrap().len(), 6);
    assert_eq!(
        r["channels"][3],
        json!({"index": 3, "power_w": 1175.0, "energy_today_wh": 38966.8})
    );
    assert_eq!(r["channels"][5]["power_w"], 19.15);
    assert_eq!(r["total_power_w"], 1110.0);
    assert_eq!(r["cost_now"], 10.62);
    assert_eq!(r["total_energy_today_wh"], 25026.31);
    assert_eq!(r["cost_today"], 196.78);
    assert_eq!(r["tariff_price"], 0.1);
    assert_eq!(r["tariff_block_limit"], 4294967295u64);
    assert_eq!(r["tariff_block_usage"], 13523);
    assert!(r.get("extra").is_none(), "{r}");
}

#[test]
fn electricity_v2_tariff_time_start() {
    let r = record("electricity_v2_tariff_time_start.xml");
    assert_eq!(r["device_id"], "44371914A0F4");
    assert_eq!(r["timestamp"], 1543140910);
    assert_eq!(r["rssi_dbm"], -77);
    assert_eq!(r["lqi"], 47);
    assert_eq!(r["channels"][0]["energy_today_wh"], 1010.49);
    assert_eq!(r["total_power_w"], 275.0);
    assert_eq!(r["tariff_time"], 1543144510);
    assert_eq!(r["tariff_start"], 1543104000);
    assert_eq!(r["tariff_price"], 0.12);
    assert!(r.get("extra").is_none(), "{r}");
}

#[test]
fn solar_v1_official_doc() {
    let r = record("solar_v1_official_doc.xml");
    assert_eq!(
        r,
        json!({"packet": "solar", "device_id": "00A0C914C851", "firmware": "1",
               "generating_w": 0.0, "exporting_w": 0.0,
               "generated_today_wh": 0.0, "exported_today_wh": 0.0})
    );
}

#[test]
fn solar_timestamp() {
    let p = parse(sample("solar_timestamp.xml").as_bytes()).unwrap();
    assert_eq!(p.timestamp, Some(1504296372));
    let r = Value::Object(p.record);
    assert_eq!(r["generating_w"], 2876.0);
    assert_eq!(r["exporting_w"], 333.0);
    assert_eq!(r["generated_today_wh"], 21715.15);
    assert_eq!(r["exported_today_wh"], 10388.81);
}

#[test]
fn heating_v1_official_doc() {
    let r = record("heating_v1_official_doc.xml");
    assert_eq!(
        r,
        json!({"packet": "heating", "device_id": "00A0C914C851", "firmware": "1",
               "rssi_dbm": -61, "lqi": 48, "battery_mv": 2730,
               "zones": [{"until": 1359183600, "zone": 0, "temperature_c": 22.37, "required_c": 15.0}]})
    );
}

#[test]
fn heating_v2_2zones() {
    let r = record("heating_v2_2zones.xml");
    assert_eq!(r["firmware"], "2");
    assert_eq!(r["timestamp"], 1384249792);
    assert_eq!(
        r["zones"][0],
        json!({"zone_id": "200027F", "last": 26, "rssi_dbm": -87, "lqi": 48, "battery_mv": 2240,
               "conf_flags": 0, "state": 0, "flags": 0, "until": 1384273800, "zone": 0,
               "temperature_c": 21.3, "required_c": 15.0})
    );
    assert_eq!(r["zones"][1]["zone_id"], "2000014");
    assert_eq!(r["zones"][1]["battery_mv"], 2960);
    assert_eq!(r["zones"][1]["temperature_c"], 21.87);
}

#[test]
fn heating_v2_fw26_1zone() {
    let r = record("heating_v2_fw26_1zone.xml");
    assert_eq!(r["device_id"], "xxxx");
    let zones = r["zones"].as_array().unwrap();
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[0]["flags"], 4229);
    assert_eq!(zones[0]["required_c"], 22.05);
    assert_eq!(zones[0]["battery_mv"], 2780);
}

#[test]
fn hot_water_v1() {
    let r = record("hot_water_v1.xml");
    assert_eq!(r["packet"], "hot_water");
    assert_eq!(r["battery_mv"], 2990);
    assert_eq!(
        r["zones"],
        json!([{"until": 536917880, "temperature_c": 20.5, "required_c": 10.0}])
    );
}

#[test]
fn hot_water_v2_2zones() {
    let r = record("hot_water_v2_2zones.xml");
    assert_eq!(r["zones"][0]["ambient_c"], 21.96);
    assert_eq!(r["zones"][0]["humidity_pct"], 66.13);
    assert_eq!(r["zones"][1]["required_c"], 50.0);
    assert_eq!(r["zones"][1]["flags"], 4097);
    assert_eq!(r["zones"][1]["humidity_pct"], 53.45);
}

#[test]
fn hot_water_v2_fw26_1zone() {
    let r = record("hot_water_v2_fw26_1zone.xml");
    assert_eq!(r["zones"][0]["until"], 0);
    assert_eq!(r["zones"][0]["temperature_c"], 28.5);
    assert_eq!(r["zones"][0]["ambient_c"], 26.25);
    assert!(r["zones"][0].get("humidity_pct").is_none());
}

#[test]
fn weather_clear() {
    assert_eq!(
        record("weather_clear.xml"),
        json!({"packet": "weather", "device_id": "00A0C914C851", "code": 113, "firmware": "1",
               "temperature_c": 15.0, "text": "Clear/Sunny"})
    );
}

#[test]
fn weather_official_doc() {
    let r = record("weather_official_doc.xml");
    assert_eq!(r["code"], 263);
    assert_eq!(r["text"], "Patchy light drizzle");
}

const ALL: [&str; 14] = [
    "electricity_v1_official_doc.xml",
    "electricity_v1_timestamp_3chan.xml",
    "electricity_v2_6chan_property.xml",
    "electricity_v2_tariff_time_start.xml",
    "heating_v1_official_doc.xml",
    "heating_v2_2zones.xml",
    "heating_v2_fw26_1zone.xml",
    "hot_water_v1.xml",
    "hot_water_v2_2zones.xml",
    "hot_water_v2_fw26_1zone.xml",
    "solar_timestamp.xml",
    "solar_v1_official_doc.xml",
    "weather_clear.xml",
    "weather_official_doc.xml",
];

#[test]
fn quoting_declaration_and_layout_do_not_change_the_record() {
    for name in ALL {
        let text = sample(name);
        let want = record(name);
        let swapped: String = text
            .chars()
            .map(|c| match c {
                '\'' => '"',
                '"' => '\'',
                c => c,
            })
            .collect();
        let one_line: String = text.lines().map(str::trim).collect();
        let undeclared = text
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
            .unwrap_or(&text)
            .to_string();
        let declared = format!("<?xml version='1.0'?>\n{undeclared}");
        for variant in [
            swapped,
            one_line,
            declared,
            undeclared,
            format!("\r\n  {text}\n\0")
                .trim_end_matches('\0')
                .to_string(),
        ] {
            let got =
                parse(variant.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}\n{variant}"));
            assert_eq!(Value::Object(got.record), want, "{name}:\n{variant}");
        }
    }
}

#[test]
fn reordered_attributes_and_elements_give_the_same_fields() {
    let a = parse(b"<solar id='a'><day><exported units='wh'>2</exported><generated units='wh'>1</generated></day><current><exporting units='w'>4</exporting><generating units='w'>3</generating></current></solar>").unwrap();
    let b = parse(b"<solar id='a'><current><generating units='w'>3</generating><exporting units='w'>4</exporting></current><day><generated units='wh'>1</generated><exported units='wh'>2</exported></day></solar>").unwrap();
    let (mut a, mut b) = (a.record, b.record);
    a.sort_keys();
    b.sort_keys();
    assert_eq!(a, b);
    let c =
        parse(b"<electricity ver='2.0' id='z'><signal lqi='3' rssi='-9'/></electricity>").unwrap();
    assert_eq!(c.record["rssi_dbm"], -9);
    assert_eq!(c.record["device_id"], "z");
}

#[test]
fn every_truncation_of_every_sample_is_refused_or_parsed_without_panic() {
    for name in ALL {
        let text = sample(name);
        let bytes = text.trim_end().as_bytes();
        for end in 0..bytes.len() {
            // A cut packet is refused with a reason (never silently accepted
            // as a whole one, and never a panic).
            if let Err(e) = parse(&bytes[..end]) {
                assert!(!e.to_string().is_empty());
            } else {
                panic!("{name} cut at {end} parsed as if whole");
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn mutated_samples_never_panic(index in 0usize..14, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = sample(ALL[index]).into_bytes();
        let at = pos.index(bytes.len());
        bytes[at] = byte;
        let _ = parse(&bytes);
    }
}
