//! Reloading a running ulog: SIGHUP and `ulog reload` swap in the changed
//! routes file without losing or repeating an acknowledged event, and a
//! broken file is refused with its diagnostics while the old pipeline goes
//! on.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, however it ends.
struct Ulog(Child);

impl Drop for Ulog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(ulog: &Ulog, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &ulog.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// One POST; `Some(status)` or `None` when nothing answered.
fn post(port: u16, path: &str, body: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

fn routes(http: u16, api: u16, out: &Path) -> String {
    format!(
        "input http {{ listen = \"127.0.0.1:{http}\" }}\n\
         match \"app.**\" file {{ path = \"{}\"  flush_interval = 50ms }}\n\
         # api {api}\n",
        out.display()
    )
}

/// `seq` fields found in a file of JSON lines, with their counts.
fn seqs(path: &Path) -> HashMap<u64, usize> {
    let mut m = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(s) = v["seq"].as_u64() {
                *m.entry(s).or_default() += 1;
            }
        }
    }
    m
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let begun = Instant::now();
    while !done() {
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_under_load_moves_events_to_the_new_routes_without_loss_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let (http, api) = (free_port(), free_port());
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let file = dir.path().join("routes.conf");
    std::fs::write(&file, routes(http, api, &a)).unwrap();
    let stderr = dir.path().join("ulog.err");
    let ulog = Ulog(
        Command::new(env!("CARGO_BIN_EXE_ulog"))
            .arg("run")
            .arg(&file)
            .args(["--api", &format!("127.0.0.1:{api}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until("http listening", || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });

    // A client posting without pause; what is answered 200 is acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if post(http, "/app.web", &format!("{{\"seq\":{seq}}}")) == Some(200) {
                    acked.lock().unwrap().push(seq);
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
                seq += 1;
            }
        })
    };
    wait_until("events in a.log", || seqs(&a).len() > 50);

    // A broken file is refused; the old routes keep running.
    std::fs::write(
        &file,
        "input http { listen = \"127.0.0.1:1\" \nmatch \"app.**\" fil {}\n",
    )
    .unwrap();
    signal(&ulog, "-HUP");
    wait_until("the refusal logged", || {
        std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains("reload refused")
    });
    let before = seqs(&a).len();
    wait_until("a.log still growing", || seqs(&a).len() > before + 20);

    // The fixed file, now routing to b.log.
    std::fs::write(&file, routes(http, api, &b)).unwrap();
    signal(&ulog, "-HUP");
    wait_until("events in b.log", || seqs(&b).len() > 50);
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    signal(&ulog, "-TERM");
    let mut ulog = ulog;
    let status = ulog.0.wait().unwrap();
    assert!(status.success(), "{status}");

    let (in_a, in_b) = (seqs(&a), seqs(&b));
    let acked = acked.lock().unwrap().clone();
    for s in &acked {
        let n = in_a.get(s).copied().unwrap_or(0) + in_b.get(s).copied().unwrap_or(0);
        assert_eq!(n, 1, "event {s} arrived {n} times");
    }
    // The switch happened once: everything in b comes after everything in a.
    let last_a = in_a.keys().max().copied().unwrap();
    let first_b = in_b.keys().min().copied().unwrap();
    assert!(last_a < first_b, "a up to {last_a}, b from {first_b}");
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(log.contains("reloaded"), "{log}");
}

#[test]
fn ulog_reload_reports_what_is_wrong_and_changes_nothing_until_the_file_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let (http, api) = (free_port(), free_port());
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let file = dir.path().join("routes.conf");
    std::fs::write(&file, routes(http, api, &a)).unwrap();
    let _ulog = Ulog(
        Command::new(env!("CARGO_BIN_EXE_ulog"))
            .arg("run")
            .arg(&file)
            .args(["--api", &format!("127.0.0.1:{api}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("http listening", || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    wait_until("api listening", || {
        TcpStream::connect(("127.0.0.1", api)).is_ok()
    });
    let reload = || {
        Command::new(env!("CARGO_BIN_EXE_ulog"))
            .args(["reload", "--api", &format!("127.0.0.1:{api}")])
            .output()
            .unwrap()
    };

    std::fs::write(
        &file,
        format!("input http {{ listen = \"127.0.0.1:{http}\" }}\nmatch \"app.**\" file {{ pth = \"x\" }}\n"),
    )
    .unwrap();
    let out = reload();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean `path`"), "{err}");
    assert!(err.contains("routes.conf:2:"), "{err}");
    assert_eq!(post(http, "/app.x", "{\"seq\":1}"), Some(200));
    wait_until("seq 1 in a.log", || seqs(&a).contains_key(&1));

    std::fs::write(&file, routes(http, api, &b)).unwrap();
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reloaded"));
    let begun = Instant::now();
    while post(http, "/app.x", "{\"seq\":2}") != Some(200) {
        assert!(begun.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until("seq 2 in b.log", || seqs(&b).contains_key(&2));
    assert!(!seqs(&a).contains_key(&2));
}
