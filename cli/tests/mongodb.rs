//! `ulog run` with `input http` → `output mongodb` against a real
//! MongoDB-wire server (FerretDB from `scripts/test-servers`), and an
//! `errors` label catching the documents the server refuses.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `ULOG_TEST_MONGODB_URI`, or the shared server started once.
fn uri() -> &'static str {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| {
        if let Ok(u) = std::env::var("ULOG_TEST_MONGODB_URI") {
            if !u.is_empty() {
                return u;
            }
        }
        let out = Command::new(root().join("scripts/test-servers"))
            .args(["start", "ferretdb"])
            .output()
            .expect("running scripts/test-servers");
        assert!(
            out.status.success(),
            "scripts/test-servers start ferretdb failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("export ULOG_TEST_MONGODB_URI="))
            .map(|v| v.trim_matches(['"', '\'']).to_string())
            .expect("no ULOG_TEST_MONGODB_URI export")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn post(port: u16, path: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad reply: {reply:?}"))
}

fn wait_until_listening(child: &mut Child, port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ulog exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ulog did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) -> String {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(status.success(), "ulog exited with {status}:\n{err}");
            return err;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ulog did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn events_posted_over_http_land_in_mongodb_and_refused_ones_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = format!("cli_{}_{}", std::process::id(), port);
    let routes = dir.path().join("routes.conf");
    std::fs::write(
        &routes,
        r#"
input http { listen = "${T_LISTEN}" }
match "home.**" mongodb {
  uri        = "${T_MONGO}"
  database   = "${T_DB}"
  collection = "{tag_parts[1]}_%Y%m"
  tag_key    = "tag"
  batch_size = 40
  workers    = 3
  server_selection_timeout = 5s
  indexes    = [{ keys = { household = 1, time = -1 }, name = "by_household" }]
}
label errors {
  match "**" file { path = "out/errors.jsonl" }
}
"#,
    )
    .unwrap();
    let envs = [
        ("T_LISTEN", format!("127.0.0.1:{port}")),
        ("T_MONGO", uri().to_string()),
        ("T_DB", db.clone()),
    ];
    let check = Command::new(env!("CARGO_BIN_EXE_ulog"))
        .arg("check")
        .arg(&routes)
        .envs(envs.iter().cloned())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_ulog"))
        .arg("run")
        .arg(&routes)
        .envs(envs.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_listening(&mut child, port);

    // 2026-12-03T10:00:00Z onwards.
    let t0 = 1_796_292_000i64;
    let mut body = String::new();
    for i in 0..150 {
        body.push_str(&format!(
            "{{\"time\":{}.5,\"seq\":{i},\"household\":\"hh1\",\"watts\":{},\"kwh\":{}.25,\"meter\":{{\"phase\":[1,2,3]}}}}\n",
            t0 + i,
            i * 10,
            i
        ));
    }
    body.push_str("{\"seq\":150,\"household\":\"hh1\",\"$set\":{\"watts\":0}}\n");
    assert_eq!(post(port, "/home.hh1.owl", &body), 200);
    assert_eq!(
        post(
            port,
            "/home.hh2.owl",
            &format!("{{\"time\":{t0},\"seq\":0,\"household\":\"hh2\",\"watts\":7}}\n")
        ),
        200
    );
    let log = stop(&mut child);

    let mut options = mongodb::options::ClientOptions::parse(uri()).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    let client = mongodb::Client::with_options(options).unwrap();
    let database = client.database(&db);
    let hh1 = database.collection::<Document>("hh1_202612");
    assert_eq!(
        hh1.count_documents(doc! {}).await.unwrap(),
        150,
        "every valid event, once; ulog's log:\n{log}"
    );
    let first = hh1.find_one(doc! {"seq": 7}).await.unwrap().expect("seq 7");
    assert_eq!(
        first.get("time"),
        Some(&Bson::DateTime(mongodb::bson::DateTime::from_millis(
            (t0 + 7) * 1000 + 500
        )))
    );
    assert_eq!(first.get("watts"), Some(&Bson::Int64(70)));
    assert_eq!(first.get("kwh"), Some(&Bson::Double(7.25)));
    assert_eq!(first.get_str("tag").unwrap(), "home.hh1.owl");
    assert_eq!(
        first.get_document("meter").unwrap(),
        &doc! {"phase": [1i64, 2i64, 3i64]}
    );
    assert!(matches!(first.get("_id"), Some(Bson::Binary(_))), "{first}");
    let hh2 = database.collection::<Document>("hh2_202612");
    assert_eq!(hh2.count_documents(doc! {}).await.unwrap(), 1);
    let indexes = hh1.list_index_names().await.unwrap();
    assert!(indexes.contains(&"by_household".to_string()), "{indexes:?}");

    // The refused document, with the server's reason.
    let errors = std::fs::read_to_string(dir.path().join("out/errors.jsonl"))
        .unwrap_or_else(|e| panic!("no errors file ({e}); ulog's log:\n{log}"));
    let errors: Vec<serde_json::Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["seq"], 150);
    let reason = errors[0]["_error"].as_str().unwrap();
    assert!(
        reason.contains("$set") && reason.contains("(code "),
        "{reason}"
    );
    assert!(
        errors[0]["_error_node"]
            .as_str()
            .is_some_and(|n| n.contains("mongodb")),
        "{errors:?}"
    );
}

/// Starts `ulog run` on `routes` (with `--api` when given) and waits for its
/// HTTP input.
fn start_ulog(routes: &Path, http_port: u16, api: Option<u16>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ulog"));
    cmd.arg("run").arg(routes);
    if let Some(api) = api {
        cmd.args(["--api", &format!("127.0.0.1:{api}")]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_listening(&mut child, http_port);
    child
}

/// The `ulog_buffer_chunks` sample of node `store` from `/metrics`.
fn buffered_chunks(api: u16) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", api)).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("ulog_buffer_chunks{node=\"store\"} "))?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_and_a_replay_of_already_delivered_chunks_leave_one_copy_of_each_event() {
    let db = format!(
        "replay_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.conf");
    let write_routes = |uri: &str| {
        std::fs::write(
            &routes,
            format!(
                "input http {{ listen = \"127.0.0.1:{port}\" }}\n\
                 match \"home.**\" mongodb {{\n\
                   id = \"store\"  uri = \"{uri}\"  database = \"{db}\"  collection = \"readings\"\n\
                   server_selection_timeout = 1s  retry_wait = 100ms\n\
                   buffer = {{ type = \"file\"  path = \"buffer\"  sync = \"always\" }}\n\
                 }}\n"
            ),
        )
        .unwrap()
    };
    // 1. The server is unreachable: 1,000 events are acknowledged into the
    //    file buffer, then ulog is killed.
    write_routes(&format!("mongodb://127.0.0.1:{}/", free_port()));
    let mut child = start_ulog(&routes, port, None);
    for b in 0..20 {
        let body: String = (b * 50..b * 50 + 50)
            .map(|s| {
                format!(
                    "{{\"seq\":{s},\"household\":\"hh-{}\",\"watts\":{}}}\n",
                    s % 4,
                    s * 3
                )
            })
            .collect();
        assert_eq!(post(port, "/home.owl", &body), 200);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The buffer as a crash would leave it after delivering everything but
    // before confirming anything: kept aside, put back after step 2.
    let buffer = dir.path().join("buffer");
    let kept = dir.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    for e in std::fs::read_dir(&buffer).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().is_some_and(|n| n != "LOCK") {
            std::fs::copy(&p, kept.join(p.file_name().unwrap())).unwrap();
        }
    }
    let client = mongodb::Client::with_uri_str(uri()).await.unwrap();
    let readings = client.database(&db).collection::<Document>("readings");
    // 2. The server is back: the restart delivers all 1,000.
    write_routes(uri());
    let mut child = start_ulog(&routes, port, None);
    let begun = Instant::now();
    while readings.count_documents(doc! {}).await.unwrap() < 1000 {
        assert!(begun.elapsed() < Duration::from_secs(60), "never delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // 3. Replay the unconfirmed buffer: every event is sent again with the
    //    same id, and stored once.
    for e in std::fs::read_dir(&kept).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, buffer.join(p.file_name().unwrap())).unwrap();
    }
    let api = free_port();
    let mut child = start_ulog(&routes, port, Some(api));
    let begun = Instant::now();
    while buffered_chunks(api) != Some(0) {
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "the replay never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        readings.count_documents(doc! {}).await.unwrap(),
        1000,
        "one copy of each"
    );
    let distinct = readings.distinct("seq", doc! {}).await.unwrap();
    assert_eq!(distinct.len(), 1000);
}
