//! `output file` on a full disk (/dev/full answers every write with ENOSPC):
//! the delivery is Retry and the error is logged. Alone in its own test
//! binary because it installs a log-capturing subscriber for its thread,
//! which tests running in parallel threads could otherwise race with.

mod common;

use bytes::Bytes;
use common::LogBuffer;
use ulog_engine::{Batch, BuildContext, Delivery, Event, EventTime, Output, Record, Tag, Value};
use ulog_plugins_basic::out_file::FileOutput;

fn raw(text: &str) -> Record {
    Record::from_json_bytes(Bytes::copy_from_slice(text.as_bytes())).unwrap()
}

fn dev_full_output(buffer_size: u64) -> FileOutput {
    let params = ulog_plugins_basic::out_file::spec()
        .validate(&[
            ("path".into(), Value::from("/dev/full")),
            ("buffer_size".into(), Value::Size(buffer_size)),
        ])
        .unwrap();
    let ctx = BuildContext {
        id: "file#1".into(),
        base_dir: std::env::temp_dir(),
    };
    FileOutput::from_params(&params, &ctx).unwrap()
}

#[tokio::test]
async fn a_full_disk_is_answered_with_retry_and_logged() {
    assert!(
        std::path::Path::new("/dev/full").exists(),
        "this test needs the /dev/full device (ENOSPC on every write)"
    );
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let batch = Batch::single(
        Tag::parse("t").unwrap(),
        Event::new(EventTime::now(), raw(r#"{"a":1}"#)),
    );

    // Written at once (buffer_size 0): the batch itself fails.
    let mut out = dev_full_output(0);
    match out.write(&batch).await {
        Delivery::Retry(e) => assert!(e.to_string().contains("No space left on device"), "{e}"),
        other => panic!("expected Retry, got {other:?}"),
    }
    // A retry fails the same way, with nothing duplicated in the buffer.
    assert!(matches!(out.write(&batch).await, Delivery::Retry(_)));
    assert!(
        logs.text().contains("writing to file failed"),
        "{}",
        logs.text()
    );
    assert!(logs.text().contains("No space left on device"));

    // Buffered: the flush fails (logged, data kept), and the next batch for
    // the failing file is written at once and refused.
    let mut buffered = dev_full_output(1 << 20);
    assert!(matches!(buffered.write(&batch).await, Delivery::Delivered));
    let err = buffered.flush().await.unwrap_err();
    assert!(err.to_string().contains("/dev/full"), "{err}");
    assert!(matches!(buffered.write(&batch).await, Delivery::Retry(_)));
    buffered.shutdown().await.unwrap_err();
    assert!(logs
        .text()
        .contains("could not be written at shutdown and is lost"));
}
