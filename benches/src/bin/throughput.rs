//! End-to-end throughput of the `ulog` binary on the five classic log-router
//! cases, against a plain byte relay as the ceiling.
//!
//! ```sh
//! cargo run --release -p ulog-benches --bin throughput            # all cases, 256 MiB each
//! cargo run --release -p ulog-benches --bin throughput -- --mib 64 tcp-null relay
//! ```
//!
//! Every case sends the same fixed corpus (apache common log lines wrapped as
//! `{"msg": ...}`, about 120 bytes each) from a separate load-generator
//! process (this binary's `gen` mode), and counts what arrives at a sink in
//! this process. It reports MiB/s and events/s of input, the CPU ulog used (in
//! cores), its peak RSS, and the share of the relay's throughput.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const CASES: &[&str] = &[
    "relay",
    "tcp-null",
    "tcp-tcp",
    "tail-tcp",
    "regex-tcp",
    "tcp-http",
    "tcp-file-tcp",
    "tcp-sync-tcp",
    "disk",
];

/// Fluent Bit 5.1 on this kind of machine, MiB/s (the brief's figures).
fn fluent_bit(case: &str) -> Option<f64> {
    Some(match case {
        "tcp-null" => 96.0,
        "tcp-tcp" => 62.0,
        "tail-tcp" => 43.0,
        "regex-tcp" => 22.0,
        "tcp-http" => 61.0,
        _ => return None,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen") => generate(&args[1..]),
        Some("relay") if args.len() == 3 => relay(&args[1], &args[2]),
        _ => bench(&args),
    }
}

/// `gen ADDR CORPUS BYTES`: write the corpus repeatedly until BYTES are sent
/// (whole lines), half-close, wait for the peer to close.
fn generate(args: &[String]) -> Result<()> {
    let [addr, corpus, total] = args else {
        bail!("usage: gen ADDR CORPUS BYTES")
    };
    let corpus = std::fs::read(corpus)?;
    let total: usize = total.parse()?;
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let mut sent = 0;
    while sent < total {
        let n = corpus.len().min(total - sent);
        s.write_all(&corpus[..n])?;
        sent += n;
    }
    s.shutdown(Shutdown::Write)?;
    let mut sink = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    while s.read(&mut sink).unwrap_or(0) > 0 {}
    Ok(())
}

/// `relay LISTEN TARGET`: the ceiling — copy bytes, no parsing. Connections
/// that close without sending anything (readiness probes) are ignored; the
/// relay ends after the first connection that carried data.
fn relay(listen: &str, target: &str) -> Result<()> {
    let l = TcpListener::bind(listen)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let (mut inbound, _) = l.accept()?;
        let n = inbound.read(&mut buf)?;
        if n == 0 {
            continue;
        }
        let mut outbound = TcpStream::connect(target)?;
        outbound.write_all(&buf[..n])?;
        loop {
            let n = inbound.read(&mut buf)?;
            if n == 0 {
                break;
            }
            outbound.write_all(&buf[..n])?;
        }
        outbound.shutdown(Shutdown::Write)?;
        return Ok(());
    }
}

struct Setup {
    /// Client connections the load is spread over.
    connections: usize,
    exe_dir: PathBuf,
    work: PathBuf,
    corpus: PathBuf,
    /// Bytes per case (whole copies of the corpus).
    bytes: usize,
    lines: u64,
}

fn bench(args: &[String]) -> Result<()> {
    let mut mib = 256usize;
    let mut connections = 1usize;
    let mut cases: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mib" => mib = it.next().context("--mib needs a number")?.parse()?,
            "--connections" => {
                connections = it
                    .next()
                    .context("--connections needs a number")?
                    .parse::<usize>()?
                    .max(1)
            }
            c if CASES.contains(&c) => cases.push(c.to_string()),
            other => bail!("unknown argument {other:?}; cases: {}", CASES.join(" ")),
        }
    }
    if cases.is_empty() {
        cases = CASES.iter().map(|s| s.to_string()).collect();
    }
    if connections > 1 {
        // The relay copies one connection.
        cases.retain(|c| c != "relay");
    } else if !cases.iter().any(|c| c == "relay") {
        cases.insert(0, "relay".into());
    }
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    if let Ok(cargo) = std::env::var("CARGO") {
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-q",
                "-p",
                "ulog-cli",
                "--bin",
                "ulog",
            ])
            .status()?;
        if !status.success() {
            bail!("building ulog failed");
        }
    }
    if !exe_dir.join("ulog").exists() {
        bail!(
            "{} not found: run `cargo build --release -p ulog-cli` first",
            exe_dir.join("ulog").display()
        );
    }
    let work = std::env::temp_dir().join(format!("ulog-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // The corpus: 64 Ki distinct lines; cases send it repeatedly.
    let mut corpus = Vec::new();
    let mut lines_in_corpus = 0u64;
    for i in 0..65536 {
        corpus.extend_from_slice(ulog_benches::apache_json_line(i).as_bytes());
        corpus.push(b'\n');
        lines_in_corpus += 1;
    }
    let copies = ((mib << 20) / corpus.len()).max(1);
    let corpus_path = work.join("corpus.jsonl");
    std::fs::write(&corpus_path, &corpus)?;
    let setup = Setup {
        connections,
        exe_dir,
        work: work.clone(),
        corpus: corpus_path,
        bytes: copies * corpus.len(),
        lines: copies as u64 * lines_in_corpus,
    };
    println!(
        "corpus: {} events of {:.0} bytes on average, {:.1} MiB per case over {} connection(s); {} cores",
        setup.lines,
        corpus.len() as f64 / lines_in_corpus as f64,
        setup.bytes as f64 / (1 << 20) as f64,
        setup.connections,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<10} {:>9} {:>12} {:>9} {:>10} {:>9} {:>12}",
        "case", "MiB/s", "events/s", "CPU", "peak RSS", "of relay", "Fluent Bit"
    );
    let mut relay_rate = None;
    let mut failures = 0;
    let mut rates: Vec<(String, f64)> = Vec::new();
    for case in &cases {
        if case == "disk" {
            match disk_ceiling(&setup.work) {
                Ok((durable, streaming)) => {
                    println!("{case:<10} {durable:>9.1}  (1 MiB writes, fdatasync after each: this disk's durable bandwidth)");
                    println!("{:<10} {streaming:>9.1}  (1 MiB writes, one fdatasync at the end: its streaming bandwidth)", "disk-seq");
                    rates.push((case.clone(), durable));
                    rates.push(("disk-seq".into(), streaming));
                }
                Err(e) => {
                    failures += 1;
                    println!("{case:<10} FAILED: {e:#}");
                }
            }
            continue;
        }
        match run_case(&setup, case) {
            Ok(r) => {
                let rate = setup.bytes as f64 / (1 << 20) as f64 / r.seconds;
                rates.push((case.clone(), rate));
                if case == "relay" {
                    relay_rate = Some(rate);
                }
                let share = relay_rate
                    .map(|c| format!("{:.0}%", 100.0 * rate / c))
                    .unwrap_or_default();
                let fb = fluent_bit(case)
                    .map(|f| format!("{f:.0} ({:.2}x)", rate / f))
                    .unwrap_or_default();
                println!(
                    "{:<10} {:>9.1} {:>12.0} {:>8.2}c {:>7.1}MiB {:>9} {:>12}",
                    case,
                    rate,
                    setup.lines as f64 / r.seconds,
                    r.cpu_seconds / r.seconds,
                    r.peak_rss_kib as f64 / 1024.0,
                    share,
                    fb
                );
            }
            Err(e) => {
                failures += 1;
                println!("{case:<10} FAILED: {e:#}");
            }
        }
    }
    let rate = |c: &str| rates.iter().find(|(n, _)| n == c).map(|r| r.1);
    if let (Some(file), Some(mem)) = (rate("tcp-file-tcp"), rate("tcp-tcp")) {
        println!(
            "file buffer (sync = interval) vs memory buffer, tcp -> tcp: {:.0}%",
            100.0 * file / mem
        );
    }
    if let (Some(file), Some(disk)) = (rate("tcp-file-tcp"), rate("disk-seq")) {
        println!(
            "file buffer (sync = interval) vs the disk's streaming bandwidth: {:.0}%",
            100.0 * file / disk
        );
    }
    if let (Some(sync), Some(disk)) = (rate("tcp-sync-tcp"), rate("disk")) {
        println!(
            "file buffer (sync = always) vs the disk's durable bandwidth: {:.0}%",
            100.0 * sync / disk
        );
    }
    std::fs::remove_dir_all(&work).ok();
    if failures > 0 {
        bail!("{failures} case(s) failed");
    }
    Ok(())
}

struct CaseResult {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A TCP sink counting newline-terminated lines; returns the counter.
fn tcp_sink() -> Result<(u16, Arc<AtomicU64>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    c.fetch_add(memchr_count(&buf[..n]), Ordering::Relaxed);
                }
            });
        }
    });
    Ok((port, count))
}

fn memchr_count(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// A minimal HTTP/1.1 sink: answers 200 to every request, counting the
/// newline-separated records of each body.
fn http_sink() -> Result<(u16, Arc<AtomicU64>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut reader =
                    BufReader::with_capacity(256 * 1024, conn.try_clone().expect("clone"));
                let mut writer = conn;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    // Request line and headers.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let records = body
                        .split(|&b| b == b'\n')
                        .filter(|l| !l.is_empty())
                        .count() as u64;
                    c.fetch_add(records, Ordering::Relaxed);
                    if writer
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, count))
}

fn proc_stats(pid: u32) -> (f64, u64) {
    let ticks = 100.0; // CLK_TCK on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = after.get(11)?.parse().ok()?;
            let stime: f64 = after.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    (cpu, rss)
}

fn start_ulog(setup: &Setup, case: &str, routes: &str) -> Result<Child> {
    let path = setup.work.join(format!("{case}.conf"));
    std::fs::write(&path, routes)?;
    let log = std::fs::File::create(setup.work.join(format!("{case}.log")))?;
    Ok(Command::new(setup.exe_dir.join("ulog"))
        .args(["--log-level", "info", "run"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

fn wait_port(port: u16, child: &mut Child) -> Result<()> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("process exited early ({status})");
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("nothing listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One load generator per connection, the bytes split between them in
/// whole corpus copies.
fn generators(setup: &Setup, port: u16) -> Result<Vec<Child>> {
    let corpus = std::fs::metadata(&setup.corpus)?.len() as usize;
    let copies = setup.bytes / corpus;
    let n = setup.connections.min(copies).max(1);
    (0..n)
        .map(|i| {
            let mine = copies / n + usize::from(i < copies % n);
            Ok(Command::new(std::env::current_exe()?)
                .arg("gen")
                .arg(format!("127.0.0.1:{port}"))
                .arg(&setup.corpus)
                .arg((mine * corpus).to_string())
                .spawn()?)
        })
        .collect()
}

/// This disk's write bandwidth, MiB/s, in the directory the buffers use:
/// durable (1 MiB writes, each followed by `fdatasync`, for two seconds: the
/// ceiling of `sync = "always"`) and streaming (1 MiB writes for two
/// seconds, one `fdatasync` at the end, counted in: the ceiling of
/// `sync = "interval"`, where every byte still goes to the disk).
fn disk_ceiling(dir: &Path) -> Result<(f64, f64)> {
    let path = dir.join("disk-ceiling.bin");
    let block = vec![0x5au8; 1 << 20];
    let mut rates = [0.0; 2];
    for (i, sync_each) in [true, false].into_iter().enumerate() {
        let mut f = std::fs::File::create(&path)?;
        let start = Instant::now();
        let mut written = 0usize;
        while start.elapsed() < Duration::from_secs(2) {
            f.write_all(&block)?;
            if sync_each {
                f.sync_data()?;
            }
            written += block.len();
        }
        f.sync_data()?;
        rates[i] = written as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
        drop(f);
        std::fs::remove_file(&path)?;
    }
    Ok((rates[0], rates[1]))
}

fn wait_count(count: &AtomicU64, want: u64, child: &mut Child, log: &Path) -> Result<()> {
    let start = Instant::now();
    let mut last = (0, Instant::now());
    while count.load(Ordering::Relaxed) < want {
        if let Some(status) = child.try_wait()? {
            // The relay exits once it has forwarded everything; ulog must not.
            if !status.success() || !log.ends_with("relay.log") {
                bail!(
                    "exited ({status}) after {} of {want} events; log: {}",
                    count.load(Ordering::Relaxed),
                    log.display()
                );
            }
        }
        let now = count.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(20) {
            bail!(
                "stalled at {now} of {want} events after {:?}; log: {}",
                start.elapsed(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn stop(child: &mut Child) -> Result<()> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill()?;
            bail!("did not stop within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn run_case(setup: &Setup, case: &str) -> Result<CaseResult> {
    let in_port = free_port()?;
    let log = setup.work.join(format!("{case}.log"));
    let (sink_port, count) = if case == "tcp-http" {
        http_sink()?
    } else {
        tcp_sink()?
    };
    let tcp_out = format!("tcp {{ host = \"127.0.0.1\"  port = {sink_port}  format = \"json\" }}");
    let tcp_in = format!("input tcp {{ listen = \"127.0.0.1:{in_port}\"  tag = \"bench\" }}");
    let buffered = |sync: &str| {
        format!(
            "tcp {{ host = \"127.0.0.1\"  port = {sink_port}  format = \"json\"\n  buffer = {{ type = \"file\"  path = \"{}\"  sync = \"{sync}\" }} }}",
            setup.work.join(format!("{case}.buffer")).display()
        )
    };
    let routes = match case {
        "relay" => String::new(),
        "tcp-file-tcp" => format!("{tcp_in}\nmatch \"**\" {}\n", buffered("interval")),
        "tcp-sync-tcp" => format!("{tcp_in}\nmatch \"**\" {}\n", buffered("always")),
        "tcp-null" => format!("{tcp_in}\nmatch \"**\" null {{ }}\n"),
        "tcp-tcp" => format!("{tcp_in}\nmatch \"**\" {tcp_out}\n"),
        "tail-tcp" => {
            let file = setup.work.join("tail.jsonl");
            let corpus = std::fs::read(&setup.corpus)?;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
            for _ in 0..setup.bytes / corpus.len() {
                f.write_all(&corpus)?;
            }
            f.flush()?;
            format!(
                "input tail {{ path = \"{}\"  tag = \"bench\"  format = \"json\"  read_from_head = true }}\nmatch \"**\" {tcp_out}\n",
                file.display()
            )
        }
        "regex-tcp" => format!(
            "{tcp_in}\nfilter \"**\" parse {{ key_name = \"msg\"  format = \"regex\"  reserve_data = true\n  expression = /^(?P<host>[^ ]*) [^ ]* (?P<user>[^ ]*) \\[(?P<time>[^\\]]*)\\] \"(?P<method>\\S+)(?: +(?P<path>[^ ]*) +\\S*)?\" (?P<code>[^ ]*) (?P<size>[^ ]*)$/ }}\nmatch \"**\" {tcp_out}\n"
        ),
        "tcp-http" => format!("{tcp_in}\nmatch \"**\" http {{ url = \"http://127.0.0.1:{sink_port}/bulk\"  format = \"ndjson\" }}\n"),
        other => bail!("unknown case {other}"),
    };
    let mut child = if case == "relay" {
        Command::new(std::env::current_exe()?)
            .arg("relay")
            .arg(format!("127.0.0.1:{in_port}"))
            .arg(format!("127.0.0.1:{sink_port}"))
            .spawn()?
    } else {
        start_ulog(setup, case, &routes)?
    };
    let started = Instant::now();
    if case != "tail-tcp" {
        wait_port(in_port, &mut child)?;
    }
    let start = if case == "tail-tcp" {
        started
    } else {
        Instant::now()
    };
    let mut gens = if case == "tail-tcp" {
        Vec::new()
    } else {
        generators(setup, in_port)?
    };
    if case == "tcp-null" {
        // Nothing to count downstream: wait until ulog has read everything
        // (the generators return when ulog closes the connections).
        for mut g in gens.drain(..) {
            if !g.wait()?.success() {
                bail!("load generator failed");
            }
        }
    } else {
        wait_count(&count, setup.lines, &mut child, &log)?;
    }
    let (cpu, rss) = proc_stats(child.id());
    let mut seconds = start.elapsed().as_secs_f64();
    if case == "relay" {
        child.wait()?;
    } else {
        stop(&mut child)?;
        if case == "tcp-null" {
            // Include draining the queues: the run ends when ulog has exited.
            seconds = start.elapsed().as_secs_f64();
        }
    }
    for mut g in gens {
        g.wait()?;
    }
    let got = if case == "tcp-null" {
        null_events_out(&log)?
    } else {
        count.load(Ordering::Relaxed)
    };
    if got != setup.lines {
        bail!("received {got} events, expected {}", setup.lines);
    }
    Ok(CaseResult {
        seconds,
        cpu_seconds: cpu,
        peak_rss_kib: rss,
    })
}

/// The `events_out` total ulog logged for its null output when it stopped.
fn null_events_out(log: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(log)?;
    text.lines()
        .filter(|l| l.contains("node=null#1"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("events_out=")?.parse().ok())
        })
        .with_context(|| format!("no totals for null#1 in {}", log.display()))
}
