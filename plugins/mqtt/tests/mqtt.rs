//! `input mqtt` and `output mqtt` against a real Mosquitto broker, with
//! `mosquitto_pub` / `mosquitto_sub` as independent clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use ulog_engine::{async_trait, Batch, Delivery, Output, Registry, Running};
use ulog_lang::Options;

const DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto process on a free port, with persistence in a temp dir so a
/// restart keeps queued messages and sessions. Killed on drop.
struct Broker {
    port: u16,
    /// A second listener that requires a password.
    auth_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Broker {
            port: free_port(),
            auth_port: free_port(),
            dir,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let passwd = self.dir.path().join("passwd");
        std::fs::write(&passwd, "").unwrap();
        let status = Command::new("mosquitto_passwd")
            .args(["-b", passwd.to_str().unwrap(), "hub", "s3cret"])
            .status()
            .expect("mosquitto_passwd (Debian mosquitto) is needed for these tests");
        assert!(status.success());
        std::fs::write(
            &conf,
            format!(
                "persistence true\npersistence_location {dir}/\nuser {user}\nper_listener_settings true\n\
                 listener {port} 127.0.0.1\nallow_anonymous true\n\
                 listener {auth_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n\
                 max_queued_messages 100000\n",
                dir = self.dir.path().display(),
                port = self.port,
                auth_port = self.auth_port,
                passwd = passwd.display(),
                // Started as root, mosquitto would drop to its own user and
                // could not write the persistence file in our temp dir.
                user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into()),
            ),
        )
        .unwrap();
        let log_path = self.dir.path().join("mosquitto.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(mosquitto())
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto (Debian package mosquitto) is needed for these tests");
        self.child = Some(child);
        let begun = Instant::now();
        let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !(up(self.port) && up(self.auth_port)) {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || begun.elapsed() > DEADLINE {
                panic!(
                    "mosquitto did not start ({exited:?}): {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker (SIGTERM: it saves its persistence file).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn publish(&self, topic: &str, qos: u8, message: &str) {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-q",
                &qos.to_string(),
                "-t",
                topic,
                "-m",
                message,
            ])
            .status()
            .expect("mosquitto_pub (Debian mosquitto-clients) is needed for these tests");
        assert!(status.success(), "mosquitto_pub failed");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mosquitto() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed (Debian package mosquitto; scripts/test installs it)");
}

/// An output that never finishes a write: the pipeline backs up behind it.
struct Stall;

#[async_trait]
impl Output for Stall {
    async fn write(&mut self, _batch: &Batch) -> Delivery {
        std::future::pending().await
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    ulog_plugins_basic::register(&mut r);
    ulog_plugins_mqtt::register(&mut r);
    r.add_output(
        ulog_engine::PluginSpec::new(ulog_engine::PluginKind::Output, "stall", "never delivers"),
        |_, _| Ok(Box::new(Stall) as Box<dyn Output>),
    );
    r
}

fn start(routes: &str, dir: &Path) -> Running {
    let options = Options {
        shutdown_timeout: Duration::from_secs(1),
        ..Options::default()
    };
    let compiled = ulog_lang::compile_str("routes.conf", routes, dir, &registry(), &options)
        .unwrap_or_else(|d| {
            panic!(
                "{}",
                d.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n")
            )
        });
    compiled.pipeline.start()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_for(path: &Path, n: usize) -> Vec<Value> {
    let begun = Instant::now();
    loop {
        let got = lines(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            begun.elapsed() < DEADLINE,
            "{} has {} of {n} lines: {got:?}",
            path.display(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn input_routes(broker: &str, client_id: &str, extra: &str) -> String {
    format!(
        r#"
input mqtt {{ id = "mq"  broker = "{broker}"  client_id = "{client_id}"  topics = ["home/+/owl/#", "raw/#"]  tag_prefix = "mqtt" {extra} }}
match "mqtt.**" file {{ path = "out/got.jsonl"  tag_key = "tag"  flush_interval = 20ms }}
label errors {{
  match "**" file {{ path = "out/errors.jsonl"  flush_interval = 20ms }}
}}
"#
    )
}

/// Waits until the input's subscription is in place: publishes a probe with
/// QoS 1 until it arrives (the broker may not know the session yet).
async fn wait_subscribed(broker: &Broker, out: &Path) -> usize {
    let begun = Instant::now();
    loop {
        broker.publish("home/probe/owl", 1, r#"{"probe":true}"#);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = lines(out).len();
        if n > 0 {
            return n;
        }
        assert!(
            begun.elapsed() < DEADLINE,
            "the mqtt input never received anything"
        );
    }
}

fn real(got: &[Value]) -> Vec<Value> {
    got.iter()
        .filter(|v| v.get("probe").is_none())
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_events_tagged_by_topic_and_bad_ones_go_to_errors() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let running = start(
        &input_routes(&broker.address(), "t1", "max_message_size = 2KiB"),
        dir.path(),
    );
    let out = dir.path().join("out/got.jsonl");
    wait_subscribed(&broker, &out).await;
    for (i, qos) in [0u8, 1, 2].iter().enumerate() {
        broker.publish(
            "home/hh-0042/owl/electricity",
            *qos,
            &format!(r#"{{"power_w":{i}.5,"qos":{qos}}}"#),
        );
    }
    broker.publish("home/hh-0042/owl/solar", 1, "not json");
    broker.publish(
        "home/hh-0042/owl/big",
        1,
        &format!(r#"{{"x":"{}"}}"#, "y".repeat(4000)),
    );
    broker.publish("raw//double-slash", 1, r#"{"a":1}"#);
    let got = real(&wait_for(&out, 4).await);
    let got = if got.len() < 3 {
        real(&wait_for(&out, 5).await)
    } else {
        got
    };
    assert_eq!(got.len(), 3, "{got:?}");
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v["tag"], "mqtt.home.hh-0042.owl.electricity");
        assert_eq!(v["topic"], "home/hh-0042/owl/electricity");
        assert_eq!(v["qos"], i as u64);
        assert_eq!(v["power_w"], i as f64 + 0.5);
    }
    let errors = wait_for(&dir.path().join("out/errors.jsonl"), 3).await;
    let reasons: Vec<String> = errors
        .iter()
        .map(|e| e["_error"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("invalid JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("larger than max_message_size")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("does not make a valid tag")),
        "{reasons:?}"
    );
    assert!(errors.iter().any(|e| e["payload"] == "not json"));
    running.stop();
    running.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_receives_what_was_published_while_ulog_was_down() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out/got.jsonl");
    let routes = input_routes(&broker.address(), "persist", "");
    let running = start(&routes, dir.path());
    let probes = wait_subscribed(&broker, &out).await;
    running.stop();
    running.wait().await;
    for i in 0..20 {
        broker.publish("home/hh-1/owl/solar", 1, &format!(r#"{{"n":{i}}}"#));
    }
    let running = start(&routes, dir.path());
    let got = real(&wait_for(&out, probes + 20).await);
    running.stop();
    running.wait().await;
    let ns: Vec<u64> = real(&lines(&out))
        .iter()
        .map(|v| v["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..20).collect::<Vec<_>>(), "all, in order, none twice");
    assert_eq!(got.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_pipeline_did_not_accept_is_not_acknowledged_and_comes_again() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    // The stalled output takes one batch and never finishes; its queue holds
    // one more; the third emit waits, so its message must stay unacked.
    let stalled = format!(
        r#"
input mqtt {{ broker = "{}"  client_id = "acker"  topics = ["acks/#"] }}
match "**" stall {{ queue_batches = 1 }}
"#,
        broker.address()
    );
    // The session exists before ulog connects, so nothing is missed while
    // it subscribes.
    let port = broker.port.to_string();
    let registered = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-c",
            "-i",
            "acker",
            "-t",
            "acks/#",
            "-E",
        ])
        .status()
        .unwrap();
    assert!(registered.success());
    let running = start(&stalled, dir.path());
    let counts = |running: &Running| {
        let m = running.metrics();
        let n = m
            .nodes
            .iter()
            .find(|n| n.id.starts_with("mqtt"))
            .unwrap()
            .clone();
        (n.events_in, n.events_out)
    };
    // One message at a time, each its own batch: the first two are accepted
    // (one in the stalled write, one in the queue), the third waits.
    for i in 0..3u64 {
        broker.publish("acks/x", 1, &format!(r#"{{"n":{i}}}"#));
        let begun = Instant::now();
        while counts(&running).0 < i + 1 {
            assert!(
                begun.elapsed() < DEADLINE,
                "message {i} never reached the input"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if i < 2 {
            while counts(&running).1 < i + 1 {
                assert!(begun.elapsed() < DEADLINE, "message {i} never accepted");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counts(&running), (3, 2), "the third is not accepted");
    running.stop();
    let report = running.wait().await;
    assert!(
        report.lost > 0,
        "the stalled output lost its queue at shutdown: {report:?}"
    );

    let healthy = format!(
        r#"
input mqtt {{ broker = "{}"  client_id = "acker"  topics = ["acks/#"] }}
match "**" file {{ path = "out/again.jsonl"  flush_interval = 20ms }}
"#,
        broker.address()
    );
    let running = start(&healthy, dir.path());
    wait_for(&dir.path().join("out/again.jsonl"), 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop();
    running.wait().await;
    let got = lines(&dir.path().join("out/again.jsonl"));
    let ns: Vec<u64> = got.iter().map(|v| v["n"].as_u64().unwrap()).collect();
    assert_eq!(
        ns,
        [2],
        "the unacknowledged message, and only it, came again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_input_reconnects_after_the_broker_restarts() {
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out/got.jsonl");
    let running = start(&input_routes(&broker.address(), "restart", ""), dir.path());
    let probes = wait_subscribed(&broker, &out).await;
    for i in 0..5 {
        broker.publish("home/a/owl/x", 1, &format!(r#"{{"n":{i}}}"#));
    }
    wait_for(&out, probes + 5).await;
    broker.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.spawn();
    // The session survived in the broker's persistence: these are queued for
    // ulog even before it has reconnected.
    for i in 5..10 {
        broker.publish("home/a/owl/x", 1, &format!(r#"{{"n":{i}}}"#));
    }
    let begun = Instant::now();
    loop {
        let ns: Vec<u64> = real(&lines(&out))
            .iter()
            .map(|v| v["n"].as_u64().unwrap())
            .collect();
        if ns.len() >= 10 {
            let mut sorted = ns.clone();
            sorted.dedup();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "{ns:?}");
            break;
        }
        assert!(begun.elapsed() < DEADLINE, "after the restart only {ns:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop();
    running.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_publishes_what_mosquitto_sub_receives_and_retries_through_a_restart() {
    let mut broker = Broker::start();
    let port = broker.port.to_string();
    // Register a persistent QoS 1 session for the independent subscriber.
    let sub = |count: usize| {
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "1",
                "-c",
                "-i",
                "checker",
                "-t",
                "home/+/alerts",
                "-v",
                "-C",
                &count.to_string(),
                "-W",
                "20",
            ])
            .output()
            .unwrap()
    };
    let registered = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-c",
            "-i",
            "checker",
            "-t",
            "home/+/alerts",
            "-E",
        ])
        .status()
        .unwrap();
    assert!(registered.success());

    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
input dummy {{ tag = "alerts.ev"  rate = 50  max_events = 10  record = {{ household = "hh-0042", msg = "plug in" }} }}
input dummy {{ tag = "idle"  rate = 1 }}
match "idle" null {{ }}
match "alerts.**" mqtt {{ broker = "{}"  topic = "home/{{household}}/alerts"  qos = 1  tag_key = "tag"  retry_wait = 100ms }}
"#,
        broker.address()
    );
    let running = start(&routes, dir.path());
    let report_wait = async {
        let begun = Instant::now();
        loop {
            let m = running.metrics();
            let out = m.nodes.iter().find(|n| n.id.starts_with("mqtt")).unwrap();
            if out.events_out >= 10 {
                break;
            }
            assert!(
                begun.elapsed() < DEADLINE,
                "output delivered {}",
                out.events_out
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    report_wait.await;
    running.stop();
    running.wait().await;
    let got = sub(10);
    let text = String::from_utf8_lossy(&got.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10, "{text}");
    for l in &lines {
        let (topic, body) = l.split_once(' ').unwrap();
        assert_eq!(topic, "home/hh-0042/alerts");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["msg"], "plug in");
        assert_eq!(v["tag"], "alerts.ev");
    }

    // Broker down: the output retries; once it is back, everything arrives.
    broker.stop();
    let running = start(&routes, dir.path());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = running.metrics();
    let node = m
        .nodes
        .iter()
        .find(|n| n.id.starts_with("mqtt"))
        .unwrap()
        .clone();
    assert_eq!(node.events_out, 0);
    assert!(
        node.retries > 0,
        "no retry while the broker is down: {node:?}"
    );
    broker.spawn();
    let begun = Instant::now();
    loop {
        let m = running.metrics();
        let out = m
            .nodes
            .iter()
            .find(|n| n.id.starts_with("mqtt"))
            .unwrap()
            .clone();
        if out.events_out >= 10 {
            break;
        }
        assert!(
            begun.elapsed() < DEADLINE,
            "after the restart delivered {}",
            out.events_out
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop();
    running.wait().await;
    let got = sub(10);
    assert_eq!(String::from_utf8_lossy(&got.stdout).lines().count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_retried_and_logged_not_a_crash() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let auth = format!("127.0.0.1:{}", broker.auth_port);
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let good = format!(
        r#"
input dummy {{ tag = "a.b"  rate = 20  max_events = 3  record = {{ k = "v" }} }}
input dummy {{ tag = "idle"  rate = 1 }}
match "idle" null {{ }}
match "**" mqtt {{ id = "good"  broker = "{auth}"  client_id = "g"  username = "hub"  password_file = "pw"  retry_wait = 100ms }}
"#
    );
    let running = start(&good, dir.path());
    let begun = Instant::now();
    while running.metrics().node("good").unwrap().events_out < 3 {
        assert!(
            begun.elapsed() < DEADLINE,
            "authenticated output never delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop();
    running.wait().await;

    let bad = good
        .replace("password_file = \"pw\"", "password = \"wrong\"")
        .replace("\"good\"", "\"bad\"");
    let running = start(&bad, dir.path());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let m = running.metrics();
    let n = m.node("bad").unwrap();
    assert_eq!(n.events_out, 0);
    assert!(n.retries > 0, "{n:?}");
    running.stop();
    running.wait().await;
}
