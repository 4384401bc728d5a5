//! Rough throughput numbers for the forward codec and a loopback pipeline.
//!
//! `cargo run -p ulog-plugins-forward --release --example forward_throughput`
//!
//! Prints events per second for: decoding PackedForward / gzip /
//! Message-mode streams, encoding map and raw-JSON records, and ulog
//! `output forward` → `input forward` over 127.0.0.1 with acks. Numbers
//! depend on the machine; nothing here asserts on them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ulog_engine::spec::{FlowSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Event, EventTime, Output, Pipeline, PluginKind,
    PluginSpec, Record, Registry, Tag, Value,
};
use ulog_plugins_forward::codec::{encode_message, Compression, EncodeMode, Encoder, FrameDecoder};

fn record(i: u64) -> String {
    format!(
        r#"{{"host":"web-{h}.example.com","method":"GET","path":"/api/v1/items/{i}","status":200,"bytes":{b},"duration_ms":{d}.25,"agent":"Mozilla/5.0 (X11; Linux x86_64)","request_id":"{i:016x}"}}"#,
        h = i % 16,
        b = 512 + i % 4096,
        d = i % 300
    )
}

fn events(n: u64, raw: bool) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let text = Bytes::from(record(i));
            let rec = Record::from_json_bytes(text).unwrap();
            let rec = if raw {
                rec
            } else {
                Record::Map(rec.to_map().into_owned())
            };
            Event::new(
                EventTime::from_secs_nanos(1_700_000_000 + i as i64, 123),
                rec,
            )
        })
        .collect()
}

fn rate(label: &str, events: u64, bytes: u64, elapsed: Duration) {
    let s = elapsed.as_secs_f64();
    println!(
        "{label:<58} {:>10.0} events/s {:>8.1} MB/s",
        events as f64 / s,
        bytes as f64 / s / 1e6
    );
}

fn decode_rate(label: &str, stream: &[u8], events_in_stream: u64) {
    decode_rate_as(
        &format!("{label}, text records"),
        stream,
        events_in_stream,
        true,
    );
    decode_rate_as(
        &format!("{label}, map records"),
        stream,
        events_in_stream,
        false,
    );
}

fn decode_rate_as(label: &str, stream: &[u8], events_in_stream: u64, text: bool) {
    let rounds = (2_000_000 / events_in_stream).max(1);
    let start = Instant::now();
    let mut total = 0u64;
    for _ in 0..rounds {
        let mut buf = BytesMut::from(stream);
        let mut d = FrameDecoder::default().text_records(text);
        while let Some(f) = d.decode(&mut buf).unwrap() {
            total += f.events.len() as u64;
        }
    }
    assert_eq!(total, rounds * events_in_stream);
    rate(label, total, rounds * stream.len() as u64, start.elapsed());
}

fn codec() {
    let evs = events(10_000, false);
    let mut packed = Vec::new();
    let mut gz = Vec::new();
    let mut messages = Vec::new();
    let mut enc = Encoder::new(EncodeMode::PackedForward, Compression::Text);
    let mut genc = Encoder::new(EncodeMode::PackedForward, Compression::Gzip);
    for chunk in evs.chunks(1000) {
        enc.encode("app.web", chunk, Some("c"), &mut packed);
        genc.encode("app.web", chunk, Some("c"), &mut gz);
    }
    for e in &evs {
        encode_message("app.web", e, None, &mut messages);
    }
    println!("record ≈ {} bytes of msgpack", packed.len() / evs.len());
    decode_rate("decode PackedForward (1000/frame)", &packed, 10_000);
    decode_rate("decode CompressedPackedForward (gzip)", &gz, 10_000);
    decode_rate("decode Message mode (1 event/frame)", &messages, 10_000);

    for (label, raw) in [
        ("encode PackedForward, map records", false),
        ("encode PackedForward, raw JSON records", true),
    ] {
        let evs = events(10_000, raw);
        let start = Instant::now();
        let mut bytes = 0;
        let mut out = Vec::new();
        for _ in 0..100 {
            for chunk in evs.chunks(1000) {
                out.clear();
                enc.encode("app.web", chunk, Some("c"), &mut out);
                bytes += out.len() as u64;
            }
        }
        rate(label, 1_000_000, bytes, start.elapsed());
    }
}

struct Count(Arc<AtomicU64>);

#[async_trait]
impl Output for Count {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Delivery::Delivered
    }
}

fn pipeline(registry: &Registry, inputs: Vec<NodeSpec>, out: NodeSpec) -> ulog_engine::Running {
    let spec = PipelineSpec {
        inputs,
        root: FlowSpec {
            filters: vec![],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![out],
            }],
        },
        labels: vec![],
    };
    Pipeline::build(&spec, registry, BuildOptions::default())
        .unwrap_or_else(|e| panic!("{e:?}"))
        .start()
}

async fn loopback(compress: &str, total: u64) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let count = Arc::new(AtomicU64::new(0));
    let mut reg = Registry::new();
    ulog_plugins_forward::register(&mut reg);
    let c = count.clone();
    reg.add_output(
        PluginSpec::new(PluginKind::Output, "count", "counts"),
        move |_, _| Ok(Box::new(Count(c.clone()))),
    );
    let rx = pipeline(
        &reg,
        vec![NodeSpec::new("forward").param("listen", format!("127.0.0.1:{port}"))],
        NodeSpec::new("count"),
    );
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let servers = Value::List(vec![Value::Map(vec![
        ("host".into(), "127.0.0.1".into()),
        ("port".into(), Value::Int(i64::from(port))),
    ])]);
    let tx = pipeline(
        &reg,
        vec![],
        NodeSpec::new("forward")
            .param("servers", servers)
            .param("require_ack_response", true)
            .param("compress", compress),
    );
    let batch = events(1000, true);
    let mut em = tx.emitter();
    let start = Instant::now();
    for _ in 0..total / 1000 {
        em.emit(Batch::new(Tag::new_unchecked("bench.loop"), batch.clone()))
            .await
            .unwrap();
    }
    while count.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    rate(
        &format!("loopback out→in, acked, compress={compress}"),
        total,
        total * record(0).len() as u64,
        elapsed,
    );
    tx.stop();
    tx.wait().await;
    rx.stop();
    rx.wait().await;
}

fn main() {
    codec();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(loopback("text", 500_000));
    rt.block_on(loopback("gzip", 500_000));
}
