//! What ulog acknowledges, it delivers: the real binary killed with
//! SIGKILL at random moments while HTTP and forward clients send to it,
//! restarted each time on the same routes file, into a file-buffered TCP
//! output. An oracle on event ids checks that every acknowledged event
//! reached the destination, and counts the duplicates (at least once).
//!
//! `ULOG_CHAOS_KILLS` sets the number of kills (30 by default, what CI
//! runs); `scripts/chaos` runs 1,000.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
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

fn spawn(routes: &std::path::Path, log: &std::path::Path) -> Ulog {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Ulog(
        Command::new(env!("CARGO_BIN_EXE_ulog"))
            .arg("run")
            .arg(routes)
            .args(["--shutdown-timeout", "10s"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn wait_listening(port: u16, ulog: &mut Ulog) {
    let begun = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = ulog.0.try_wait() {
            panic!("ulog exited early: {status}");
        }
        assert!(begun.elapsed() < Duration::from_secs(30), "never listened");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A tiny xorshift generator: reproducible from the seed printed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Events the destination received: (client, seq), repeats included.
type Received = Arc<Mutex<Vec<(String, u64)>>>;

/// The destination: a TCP server reading JSON lines, across reconnects.
fn sink() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Received = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                // A slow destination (about 1 MB/s), so that ulog holds a
                // backlog when it is killed.
                let slow = Slow(conn);
                for line in BufReader::with_capacity(4096, slow).lines() {
                    let Ok(line) = line else { break };
                    // A line cut by a kill is incomplete: its chunk was not
                    // confirmed and comes again.
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if let (Some(c), Some(s)) = (v["c"].as_str(), v["seq"].as_u64()) {
                        g.lock().unwrap().push((c.to_string(), s));
                    }
                }
            });
        }
    });
    (port, got)
}

/// A reader that pauses before every read.
struct Slow(TcpStream);

impl Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(4));
        self.0.read(buf)
    }
}

type Acked = Arc<Mutex<HashSet<(String, u64)>>>;

/// Posts batches of 20 events; those answered 200 are acknowledged.
fn http_client(name: String, port: u16, stop: Arc<AtomicBool>, acked: Acked) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<u64> = (seq..seq + 20).collect();
        let body: Vec<String> = batch
            .iter()
            .map(|s| {
                format!(
                    "{{\"c\":\"{name}\",\"seq\":{s},\"household\":\"h{}\",\"watts\":{}}}",
                    s % 5,
                    s * 7 % 3000
                )
            })
            .collect();
        let body = format!("[{}]", body.join(","));
        let ok = (|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                s,
                "POST /chaos.http HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply.starts_with("HTTP/1.1 200"))
        })()
        .unwrap_or(false);
        if ok {
            let mut a = acked.lock().unwrap();
            for s in &batch {
                a.insert((name.clone(), *s));
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Unacknowledged events are not sent again: they are simply not
        // promised. New numbers each time keep the oracle simple.
        seq += 20;
    }
}

fn msgpack_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    if b.len() < 32 {
        out.push(0xa0 | b.len() as u8);
    } else {
        out.push(0xd9);
        out.push(b.len() as u8);
    }
    out.extend_from_slice(b);
}

/// A forward-mode frame of 20 events asking for an ack of `chunk`.
fn forward_frame(name: &str, first: u64, chunk: &str) -> Vec<u8> {
    let mut out = vec![0x93];
    msgpack_str(&mut out, "chaos.forward");
    out.extend_from_slice(&[0xdc, 0, 20]);
    for s in first..first + 20 {
        out.push(0x92);
        out.push(0xce);
        out.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        out.push(0x82);
        msgpack_str(&mut out, "c");
        msgpack_str(&mut out, name);
        msgpack_str(&mut out, "seq");
        out.push(0xcf);
        out.extend_from_slice(&s.to_be_bytes());
    }
    out.push(0x81);
    msgpack_str(&mut out, "chunk");
    msgpack_str(&mut out, chunk);
    out
}

/// Sends forward frames with `chunk` options on one connection at a time;
/// events are acknowledged when ulog's `{"ack": chunk}` comes back.
fn forward_client(name: String, port: u16, stop: Arc<AtomicBool>, acked: Acked) {
    let mut seq = 0u64;
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let chunk = format!("{name}-{seq}");
        let frame = forward_frame(&name, seq, &chunk);
        let ok = (|| -> std::io::Result<bool> {
            if conn.is_none() {
                let s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                conn = Some(s);
            }
            let s = conn.as_mut().expect("connected above");
            s.write_all(&frame)?;
            let mut reply = Vec::new();
            let mut buf = [0u8; 256];
            while !reply.windows(chunk.len()).any(|w| w == chunk.as_bytes()) {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(false);
                }
                reply.extend_from_slice(&buf[..n]);
            }
            Ok(true)
        })()
        .unwrap_or(false);
        if ok {
            let mut a = acked.lock().unwrap();
            for s in seq..seq + 20 {
                a.insert((name.clone(), s));
            }
        } else {
            conn = None;
            std::thread::sleep(Duration::from_millis(5));
        }
        seq += 20;
    }
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let kills: usize = std::env::var("ULOG_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}, {kills} kills");
    let mut rng = Rng(seed);
    let (sink_port, received) = sink();
    let (http, forward) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.conf");
    std::fs::write(
        &routes,
        format!(
            "input http {{ listen = \"127.0.0.1:{http}\" }}\n\
             input forward {{ listen = \"127.0.0.1:{forward}\" }}\n\
             match \"chaos.**\" tcp {{\n\
               id = \"archive\"  port = {sink_port}  retry_wait = 50ms  retry_max_wait = 1s\n\
               buffer = {{ type = \"file\"  path = \"buffer\"  sync = \"always\" }}\n\
             }}\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("ulog.log");

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let mut clients = Vec::new();
    for i in 0..2 {
        let (s, a) = (stop.clone(), acked.clone());
        clients.push(std::thread::spawn(move || {
            http_client(format!("http{i}"), http, s, a)
        }));
        let (s, a) = (stop.clone(), acked.clone());
        clients.push(std::thread::spawn(move || {
            forward_client(format!("fwd{i}"), forward, s, a)
        }));
    }

    let begun = Instant::now();
    for _ in 0..kills {
        let mut ulog = spawn(&routes, &log);
        wait_listening(http, &mut ulog);
        std::thread::sleep(Duration::from_millis(rng.range(20, 250)));
        // SIGKILL: no shutdown, no flush, no final sync.
        ulog.0.kill().unwrap();
        ulog.0.wait().unwrap();
    }
    // A last run: the clients stop, and what is buffered drains.
    let mut ulog = spawn(&routes, &log);
    wait_listening(http, &mut ulog);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got: HashSet<(String, u64)> = received.lock().unwrap().iter().cloned().collect();
        if acked.is_subset(&got) {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = acked.difference(&got).take(10).collect();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{} of {} acknowledged events never arrived (seed {seed}), e.g. {missing:?}\nulog log (newest first):\n{}",
                acked.difference(&got).count(),
                acked.len(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(&ulog);
    let status = ulog.0.wait().unwrap();
    assert!(status.success(), "clean stop after draining: {status}");

    let got = received.lock().unwrap().clone();
    let mut counts: HashMap<&(String, u64), usize> = HashMap::new();
    for e in &got {
        *counts.entry(e).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let unacked_arrived = counts.keys().filter(|k| !acked.contains(**k)).count();
    println!(
        "{kills} kills in {:.1} s: {} events acknowledged, 0 lost, {} duplicates ({:.2}%), {} unacknowledged events arrived too",
        begun.elapsed().as_secs_f64(),
        acked.len(),
        duplicates,
        100.0 * duplicates as f64 / acked.len().max(1) as f64,
        unacked_arrived
    );
    assert!(
        acked.len() >= kills * 20,
        "the clients got through: {}",
        acked.len()
    );
}

/// Sends SIGTERM (a clean stop) to the child.
fn sigterm(ulog: &Ulog) {
    let pid = ulog.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
}

/// Peak resident memory of a process, KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_destination_down_for_a_while_gets_everything_in_order_and_memory_stays_bounded() {
    let (http, dest) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.conf");
    std::fs::write(
        &routes,
        format!(
            "input http {{ listen = \"127.0.0.1:{http}\" }}\n\
             match \"home.**\" tcp {{\n\
               id = \"archive\"  port = {dest}  retry_wait = 100ms  retry_max_wait = 200ms\n\
               buffer = {{ type = \"file\"  path = \"buffer\"  sync = \"interval\"  memory_limit = 4MiB }}\n\
             }}\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("ulog.log");
    let mut ulog = spawn(&routes, &log);
    wait_listening(http, &mut ulog);
    let idle = peak_rss_kib(ulog.0.id());

    // 96 MiB while nothing listens on the destination port; the peak after
    // the first 32 MiB and after all of it.
    let mut seq = 0u64;
    let mut sent_bytes = 0usize;
    let mut peak_at_32 = 0;
    while sent_bytes < 96 << 20 {
        if peak_at_32 == 0 && sent_bytes >= 32 << 20 {
            peak_at_32 = peak_rss_kib(ulog.0.id());
        }
        let body: Vec<String> = (seq..seq + 4000)
            .map(|s| {
                format!(
                    "{{\"seq\":{s},\"household\":\"h{}\",\"pad\":\"{}\"}}",
                    s % 9,
                    "x".repeat(200)
                )
            })
            .collect();
        let body = format!("[{}]", body.join(","));
        sent_bytes += body.len();
        let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap();
        write!(
            s,
            "POST /home.owl HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        seq += 4000;
    }
    let peak = peak_rss_kib(ulog.0.id());
    println!(
        "destination down: {} events ({} MiB) accepted into the file buffer; peak RSS {} MiB after 32 MiB, {} MiB after all (idle {} MiB)",
        seq,
        sent_bytes >> 20,
        peak_at_32 / 1024,
        peak / 1024,
        idle / 1024
    );
    // Three times the backlog, not three times the memory: what is queued
    // beyond `memory_limit` is on disk.
    assert!(
        peak < peak_at_32 + (16 << 10),
        "peak RSS grew with the backlog: {peak_at_32} KiB after 32 MiB, {peak} KiB after 96 MiB"
    );

    // The destination comes up: everything, in order, once.
    let listener = TcpListener::bind(("127.0.0.1", dest)).unwrap();
    let (conn, _) = listener.accept().unwrap();
    let mut expect = 0u64;
    for line in BufReader::new(conn).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(
            v["seq"].as_u64(),
            Some(expect),
            "in order, no gaps, no repeats"
        );
        expect += 1;
        if expect == seq {
            break;
        }
    }
    assert_eq!(expect, seq);
}
