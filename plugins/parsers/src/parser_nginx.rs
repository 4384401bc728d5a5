//! `format = "nginx"`: nginx's default `combined` access log:
//!
//! `$remote_addr - $remote_user [$time_local] "$request" $status
//! $body_bytes_sent "$http_referer" "$http_user_agent"`
//!
//! optionally followed by `"$http_x_forwarded_for"`. The grammar is
//! apache's; the client address goes to `remote` (as in fluentd), the other
//! fields are `user`, `method`, `path`, `protocol`, `code`, `size`,
//! `referer`, `agent` and `http_x_forwarded_for`.

use crate::common::Common;
use crate::parser_apache2::AccessLogParser;

/// The nginx access-log parser.
pub(crate) fn nginx(common: Common) -> AccessLogParser {
    AccessLogParser::nginx(common)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Parser;
    use bytes::Bytes;
    use serde_json::{json, Value};

    #[test]
    fn default_combined_lines() {
        let p = nginx(Common::default());
        let r = p
            .parse(Bytes::from_static(
                br#"93.180.71.3 - - [17/May/2015:08:05:32 +0000] "GET /downloads/product_1 HTTP/1.1" 304 0 "-" "Debian APT-HTTP/1.3 (0.8.16~exp12ubuntu10.21)""#,
            ))
            .unwrap();
        assert_eq!(r.time.unwrap().secs(), 1_431_849_932);
        assert_eq!(
            Value::Object(r.record.to_map().into_owned()),
            json!({"remote": "93.180.71.3", "user": null, "method": "GET", "path": "/downloads/product_1",
                   "protocol": "HTTP/1.1", "code": 304, "size": 0, "referer": null,
                   "agent": "Debian APT-HTTP/1.3 (0.8.16~exp12ubuntu10.21)"})
        );
        // With X-Forwarded-For, and nginx's \x22 escaping kept as written.
        let r = p
            .parse(Bytes::from_static(
                br#"10.0.0.1 - bob [01/Mar/2024:10:00:00 +0100] "POST /api/v1/items?q=\x22a\x22 HTTP/2.0" 201 512 "https://shop.example/" "Mozilla/5.0 (X11; Linux x86_64)" "203.0.113.7, 10.0.0.1""#,
            ))
            .unwrap();
        let m = r.record.to_map();
        assert_eq!(m["path"], r#"/api/v1/items?q=\x22a\x22"#);
        assert_eq!(m["http_x_forwarded_for"], "203.0.113.7, 10.0.0.1");
        assert_eq!(m["user"], "bob");
    }
}
