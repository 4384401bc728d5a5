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
