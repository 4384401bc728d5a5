//! `input owl` in a real pipeline, fed the shared sample packets over a real
//! UDP socket (UDP push, and multicast on loopback where the sandbox allows).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::UdpSocket;
use ulog_engine::Registry;
use ulog_lang::Options;

fn registry() -> Registry {
    let mut r = Registry::new();
    ulog_plugins_basic::register(&mut r);
    ulog_plugins_owl::register(&mut r);
    r
}

fn sample(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/owl")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const ROUTES: &str = r#"
input owl { id = "owl"  mode = "unicast"  listen = "${OWL_LISTEN}"  tag = "home.{device_id}.owl.{packet}"  source_address_key = "from" }
match "home.**" file { path = "out/readings.jsonl"  tag_key = "tag"  time_key = "time"  flush_interval = 50ms }
label errors {
  match "**" file { path = "out/errors.jsonl"  flush_interval = 50ms }
}
"#;

/// Waits until `path` has `n` lines, resending `probe` meanwhile (UDP has no
/// connection to wait for: the input may not have bound yet).
async fn wait_for(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = lines(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} of {n} lines",
            path.display(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_packets_become_records_and_bad_ones_go_to_errors() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    std::env::set_var("OWL_LISTEN", format!("127.0.0.1:{port}"));
    let compiled = ulog_lang::compile_str(
        "routes.conf",
        ROUTES,
        dir.path(),
        &registry(),
        &Options::default(),
    )
    .unwrap_or_else(|d| {
        panic!(
            "{}",
            d.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n")
        )
    });
    let running = compiled.pipeline.start();
    let readings = dir.path().join("out/readings.jsonl");
    let errors = dir.path().join("out/errors.jsonl");
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = ("127.0.0.1", port);

    // Until the input is bound, datagrams are refused by the kernel: repeat
    // one reading until it shows up.
    let first = sample("solar_timestamp.xml");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&readings).is_empty() {
        sock.send_to(&first, to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            Instant::now() < deadline,
            "owl input never received anything"
        );
    }
    let before = lines(&readings).len();

    for name in [
        "electricity_v2_6chan_property.xml",
        "heating_v2_2zones.xml",
        "weather_clear.xml",
    ] {
        sock.send_to(&sample(name), to).await.unwrap();
    }
    sock.send_to(b"<electricity id='x'><chan id='0'><curr units='w'>12", to)
        .await
        .unwrap();
    sock.send_to(b"<gas id='x'/>", to).await.unwrap();

    let got = wait_for(&readings, before + 3).await;
    let new = &got[before..];
    let by_packet = |p: &str| {
        new.iter()
            .find(|r| r["packet"] == p)
            .unwrap_or_else(|| panic!("no {p} in {new:?}"))
    };
    let e = by_packet("electricity");
    assert_eq!(e["tag"], "home.443719123456.owl.electricity");
    assert_eq!(e["channels"][3]["power_w"], 1175.0);
    assert_eq!(e["from"], "127.0.0.1");
    // The packet's own timestamp is the event time.
    assert_eq!(e["time"].as_f64().unwrap() as i64, 1504296371);
    let h = by_packet("heating");
    assert_eq!(h["zones"][1]["battery_mv"], 2960);
    let w = by_packet("weather");
    assert_eq!(w["tag"], "home.00A0C914C851.owl.weather");
    assert!(
        w["time"].as_f64().unwrap() > 1.7e9,
        "no timestamp: receive time"
    );
    assert_eq!(got[0]["generating_w"], 2876.0);

    let errs = wait_for(&errors, 2).await;
    assert!(
        errs.iter().any(
            |r| r["_error"].as_str().unwrap().starts_with("malformed XML")
                && r["raw"]
                    .as_str()
                    .unwrap()
                    .starts_with("<electricity id='x'>")
        ),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|r| r["_error"]
            .as_str()
            .unwrap()
            .contains("unknown packet type <gas>")),
        "{errs:?}"
    );
    assert!(errs.iter().all(|r| r["_error_node"] == "owl"));

    // Still alive after bad packets.
    sock.send_to(&sample("hot_water_v1.xml"), to).await.unwrap();
    let got = wait_for(&readings, before + 4).await;
    assert!(got.iter().any(|r| r["packet"] == "hot_water"));

    running.stop();
    let report = running.wait().await;
    assert_eq!(report.lost, 0);
}

#[test]
fn bad_settings_are_build_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (routes, want) in [
        (
            "input owl { group = \"10.0.0.1:22600\" }\nmatch \"**\" null {}\n",
            "not a multicast address",
        ),
        (
            "input owl { tag = \"owl.{house}\" }\nmatch \"**\" null {}\n",
            "unknown placeholder `{house}`",
        ),
        (
            "input owl { interface = \"eth0\" }\nmatch \"**\" null {}\n",
            "must be an IPv4 address",
        ),
    ] {
        let err = match ulog_lang::compile_str(
            "r.conf",
            routes,
            dir.path(),
            &registry(),
            &Options::default(),
        ) {
            Ok(_) => panic!("accepted: {routes}"),
            Err(d) => d.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n"),
        };
        assert!(err.contains(want), "{routes}\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_on_loopback() {
    use std::net::Ipv4Addr;
    // Some sandboxes have no multicast route on loopback: check first, and
    // say so instead of failing for a reason that is not ulog's.
    let port = free_udp_port();
    let group: Ipv4Addr = "239.255.77.19".parse().unwrap();
    let probe = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
    if probe
        .join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
        .is_err()
    {
        eprintln!("multicast join on loopback refused here; multicast test skipped");
        return;
    }
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "input owl {{ group = \"{group}:{port}\"  interface = \"127.0.0.1\" }}\nmatch \"owl.**\" file {{ path = \"out/m.jsonl\"  flush_interval = 50ms }}\n"
    );
    let compiled = ulog_lang::compile_str(
        "r.conf",
        &routes,
        dir.path(),
        &registry(),
        &Options::default(),
    )
    .unwrap_or_else(|d| {
        panic!(
            "{}",
            d.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n")
        )
    });
    let running = compiled.pipeline.start();
    let sender = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    sender.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    sender.set_multicast_loop_v4(true).unwrap();
    let to: std::net::SocketAddr = (group, port).into();
    let out = dir.path().join("out/m.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines(&out).is_empty() {
        if sender
            .send_to(&sample("solar_v1_official_doc.xml"), &to.into())
            .is_err()
        {
            eprintln!("multicast send on loopback refused here; multicast test skipped");
            running.stop();
            running.wait().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() > deadline {
            break;
        }
    }
    let got = lines(&out);
    running.stop();
    running.wait().await;
    assert!(!got.is_empty(), "joined the group but received nothing");
    assert_eq!(got[0]["packet"], "solar");
}
