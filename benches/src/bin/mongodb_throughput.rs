//! Throughput of `output mongodb` into a real server, against the server's
//! own ceiling measured by the same harness.
//!
//! ```sh
//! cargo run --release -p ulog-benches --bin mongodb_throughput
//! cargo run --release -p ulog-benches --bin mongodb_throughput -- --events 100000 --sizes 1000 --rounds 20
//! cargo run --release -p ulog-benches --bin mongodb_throughput -- --param batch_size=5000 --param workers=1
//! ```
//!
//! For each batch size (100, 1,000, 10,000 events of about 120 bytes of
//! JSON) it times three ways of storing the same events, each in a fresh
//! collection:
//!
//! - **ulog**: [`MongoOutput::write`] with default parameters, one batch at a
//!   time as the engine calls it (JSON text → BSON, grouping, sub-batches,
//!   answer mapping included; the output stays connected between rounds, as
//!   in a running pipeline);
//! - **ceiling**: a plain driver loop sending the same documents, built
//!   beforehand as BSON, as unordered `insert_many` batches of the same size,
//!   once with one batch in flight and once with two (the output's default
//!   `workers`); the faster of the two is the ceiling.
//!
//! The server is `ULOG_TEST_MONGODB_URI`, or FerretDB from
//! `scripts/test-servers`. Client CPU is this process's user + system time.
//!
//! The three take turns: the events are cut into `--rounds` slices (10),
//! and each round stores one slice each way, in a rotating order, so all
//! three meet the same server state and the same load from whatever else
//! runs on the machine. Each figure is the total over the rounds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bson::RawDocumentBuf;
use bytes::Bytes;
use ulog_engine::{
    Batch, BuildContext, Delivery, Event, EventId, EventTime, Output, Record, Tag, Value,
};
use ulog_plugins_mongodb::out_mongodb::{spec, MongoOutput};

fn main() -> Result<()> {
    let mut events = 50_000usize;
    let mut rounds = 10usize;
    let mut params: Vec<(String, Value)> = Vec::new();
    let mut sizes = vec![100usize, 1_000, 10_000];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--events" => events = args.next().context("--events N")?.parse()?,
            "--param" => {
                let kv = args.next().context("--param NAME=INTEGER")?;
                let (k, v) = kv.split_once('=').context("--param NAME=INTEGER")?;
                params.push((k.to_string(), Value::Int(v.parse()?)));
            }
            "--rounds" => rounds = args.next().context("--rounds N")?.parse::<usize>()?.max(1),
            "--sizes" => {
                sizes = args
                    .next()
                    .context("--sizes A,B,C")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => bail!("unknown argument {other:?} (--events N, --sizes A,B,C, --rounds N, --param NAME=INTEGER)"),
        }
    }
    let uri = server_uri()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(&uri, events, &sizes, rounds, &params))
}

fn server_uri() -> Result<String> {
    if let Ok(u) = std::env::var("ULOG_TEST_MONGODB_URI") {
        if !u.is_empty() {
            return Ok(u);
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-servers");
    let out = Command::new(&script)
        .args(["start", "ferretdb"])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "test-servers failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("export ULOG_TEST_MONGODB_URI="))
        .map(|v| v.trim_matches(['"', '\'']).to_string())
        .context("no ULOG_TEST_MONGODB_URI in test-servers' output")
}

/// `n` events of about 120 bytes of JSON text each, with fresh ids.
fn corpus(n: usize) -> Vec<Event> {
    let ids: Vec<EventId> = EventId::fresh(n).collect();
    (0..n)
        .map(|i| {
            let text = format!(
                r#"{{"household":"hh-{:04}","device":"owl","seq":{i},"watts":{},"kwh":{}.25,"ok":true,"msg":"reading {:06}"}}"#,
                i % 500,
                (i * 37) % 4000,
                i % 100,
                i % 1_000_000
            );
            let mut e = Event::new(
                EventTime::from_secs_nanos(1_796_292_000 + (i / 100) as i64, 0),
                Record::from_json_bytes(Bytes::from(text)).expect("valid JSON"),
            );
            e.id = ids[i];
            e
        })
        .collect()
}

/// This process's CPU time so far (user + system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = f.iter().sum::<u64>();
    Duration::from_millis(ticks * 10)
}

#[derive(Default, Clone, Copy)]
struct Tally {
    time: Duration,
    cpu: Duration,
}

impl Tally {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.time.as_secs_f64()
    }
}

async fn bench(
    uri: &str,
    n: usize,
    sizes: &[usize],
    rounds: usize,
    params: &[(String, Value)],
) -> Result<()> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await?;
    options.server_selection_timeout = Some(Duration::from_secs(10));
    let client = mongodb::Client::with_options(options)?;
    let db_name = format!("bench_{}", std::process::id());
    let db = client.database(&db_name);
    let events = corpus(n);
    // The same documents as the output makes, encoded once, outside the clock.
    let prebuilt = prebuilt_documents(uri, &db_name, &events).await?;
    if !params.is_empty() {
        println!("output parameters (else defaults): {params:?}");
    }
    let tag = Tag::parse("bench.mongo")?;

    println!("MongoDB throughput, {n} events of ~120 B each way, {rounds} rounds, server {uri}");
    println!(
        "{:>7}  {:>12} {:>9}  {:>12} {:>12} {:>9}  {:>6}",
        "batch", "ulog ev/s", "ulog cpu", "ceil-1 ev/s", "ceil-2 ev/s", "ceil cpu", "ratio"
    );
    for &size in sizes {
        db.drop().await?;
        let mut out = output(uri, &db_name, &format!("u_{size}"), params)?;
        let batches: Vec<Batch> = events
            .chunks(size)
            .map(|c| Batch::new(tag.clone(), c.to_vec()))
            .collect();
        let chunks: Vec<&[RawDocumentBuf]> = prebuilt.chunks(size).collect();
        let per_round = batches.len().div_ceil(rounds).max(1);
        let c1 = db.collection::<RawDocumentBuf>(&format!("c1_{size}"));
        let c2 = db.collection::<RawDocumentBuf>(&format!("c2_{size}"));
        let mut tally = [Tally::default(); 3];
        for (round, first) in (0..batches.len()).step_by(per_round).enumerate() {
            let range = first..(first + per_round).min(batches.len());
            for k in 0..3 {
                let way = (round + k) % 3;
                let (t0, cpu0) = (Instant::now(), cpu_time());
                match way {
                    0 => {
                        for b in &batches[range.clone()] {
                            match out.write(b).await {
                                Delivery::Delivered => {}
                                d => bail!("ulog: {d:?}"),
                            }
                        }
                    }
                    1 => ceiling(&c1, &chunks[range.clone()], 1).await?,
                    _ => ceiling(&c2, &chunks[range.clone()], 2).await?,
                }
                tally[way].time += t0.elapsed();
                tally[way].cpu += cpu_time() - cpu0;
            }
        }
        out.shutdown().await?;
        for name in [
            format!("u_{size}"),
            format!("c1_{size}"),
            format!("c2_{size}"),
        ] {
            let stored = db
                .collection::<bson::Document>(&name)
                .estimated_document_count()
                .await?;
            if stored != n as u64 {
                bail!("{name} has {stored} documents of {n}");
            }
        }
        let [u, c1, c2] = tally;
        let ceil = if c1.rate(n) >= c2.rate(n) { c1 } else { c2 };
        println!(
            "{size:>7}  {:>12.0} {:>8.2}s  {:>12.0} {:>12.0} {:>8.2}s  {:>5.0}%",
            u.rate(n),
            u.cpu.as_secs_f64(),
            c1.rate(n),
            c2.rate(n),
            ceil.cpu.as_secs_f64(),
            100.0 * u.rate(n) / ceil.rate(n)
        );
    }
    db.drop().await?;
    Ok(())
}

/// What the output sends for `events`, read back from a scratch collection
/// it wrote to (so the ceiling sends byte-identical documents).
async fn prebuilt_documents(uri: &str, db: &str, events: &[Event]) -> Result<Vec<RawDocumentBuf>> {
    use futures_util::TryStreamExt;
    let mut out = output(uri, db, "scratch", &[])?;
    let batch = Batch::new(Tag::parse("bench.mongo")?, events.to_vec());
    match out.write(&batch).await {
        Delivery::Delivered => {}
        d => bail!("writing the scratch copy: {d:?}"),
    }
    out.shutdown().await?;
    let client = mongodb::Client::with_uri_str(uri).await?;
    let docs: Vec<RawDocumentBuf> = client
        .database(db)
        .collection::<RawDocumentBuf>("scratch")
        .find(bson::doc! {})
        .sort(bson::doc! {"seq": 1})
        .await?
        .try_collect()
        .await?;
    if docs.len() != events.len() {
        bail!("the scratch copy has {} documents", docs.len());
    }
    Ok(docs)
}

fn output(uri: &str, db: &str, collection: &str, extra: &[(String, Value)]) -> Result<MongoOutput> {
    let mut given: Vec<(String, Value)> = vec![
        ("uri".into(), uri.into()),
        ("database".into(), db.into()),
        ("collection".into(), collection.into()),
    ];
    given.extend(extra.iter().cloned());
    let params = spec()
        .validate(&given)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let ctx = BuildContext {
        id: "mongodb#bench".into(),
        base_dir: ".".into(),
    };
    Ok(MongoOutput::from_params(&params, &ctx)?)
}

/// Unordered `insert_many` of each chunk, `in_flight` at once.
async fn ceiling(
    coll: &mongodb::Collection<RawDocumentBuf>,
    chunks: &[&[RawDocumentBuf]],
    in_flight: usize,
) -> Result<()> {
    use futures_util::stream::{self, StreamExt};
    let results: Vec<_> = stream::iter(chunks)
        .map(|chunk| {
            let coll = coll.clone();
            async move { coll.insert_many(*chunk).ordered(false).await }
        })
        .buffered(in_flight)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}
