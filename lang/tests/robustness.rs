//! The parser and compiler never panic, whatever the input: mutations of a
//! valid file (deterministic, seeded), deep nesting, odd encodings.

mod common;

use std::path::Path;

use ulog_lang::{compile_str, parse_str, Options};

const BASE: &str = r#"# comment
include "conf.d/*.conf"
input http { id = "phones"  listen = "${HTTP_LISTEN:-127.0.0.1:9880}" }
input dummy { tag = "demo.tick"  rate = 5  record = { msg = "alive", n = 1, l = [1.5, 2s, 8MiB, /re\/x/] } }
filter "home.*.owl" "home.*.nissan" record { set = { site = "mk", "k k" = "\u{e9}\t" } }
match "app.**" "web.{api,ui}" file { path = "out/{tag}.jsonl"  format = "json"  flush_interval = 250ms }
match "trial.**" copy {
  file   { path = "out/trial.jsonl" }
  stdout { }
}
label errors {
  match "**" file { path = "out/errors.jsonl" }
}
"#;

/// xorshift64*: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "{", "}", "[", "]", "\"", "=", ",", "#", "\\", "$", "${", "${X", ":-", "/", "\n", " ", "é",
    "\t", "\r\n", "input", "match", "label", "include", "copy", "1", "-", "5sec", "1e", "\\u{",
    "\\uD800", "**", ".", "\u{feff}", "😀",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(3) {
            0 if at < chars.len() => {
                let n = 1 + rng.below(8).min(chars.len() - at - 1);
                chars.drain(at..at + n);
            }
            1 => {
                let piece = PIECES[rng.below(PIECES.len())];
                for (i, c) in piece.chars().enumerate() {
                    chars.insert(at + i, c);
                }
            }
            _ => {
                // Duplicate a slice somewhere else.
                let from = rng.below(chars.len());
                let n = rng.below(20).min(chars.len() - from);
                let slice: Vec<char> = chars[from..from + n].to_vec();
                for (i, c) in slice.into_iter().enumerate() {
                    chars.insert(at.min(chars.len()) + i, c);
                }
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_files_never_panic_and_errors_have_positions() {
    let registry = common::registry();
    let options = common::options();
    let dir = tempfile::tempdir().unwrap();
    // More rounds or another seed: ULOG_LANG_ROUNDS=100000 ULOG_LANG_SEED=7.
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut rng = Rng(env("ULOG_LANG_SEED", 0x5EED_1234_ABCD_0001) | 1);
    for round in 0..env("ULOG_LANG_ROUNDS", 600) {
        let text = mutate(&mut rng, BASE);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = parse_str("m.conf", &text, &options);
            compile_str("m.conf", &text, dir.path(), &registry, &options)
        }));
        let Ok(result) = result else {
            panic!("round {round}: panicked on:\n{text}");
        };
        if let Err(diags) = result {
            assert!(!diags.is_empty());
            for d in diags.iter().filter(|d| d.is_error()) {
                assert!(
                    d.line_col().is_some(),
                    "round {round}: no position for {d:?} in:\n{text}"
                );
                let r = d.render();
                assert!(r.contains("m.conf:"), "{r}");
            }
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for (open, close) in [("[", "]"), ("{ a = ", "}")] {
        for depth in [10, 100, 300, 1000, 5000] {
            let text = format!(
                "input x {{ v = {}1{} }}",
                open.repeat(depth),
                close.repeat(depth)
            );
            match parse_str("deep.conf", &text, &Options::default()) {
                Ok(_) => assert!(depth <= 1000, "{depth} levels parsed"),
                Err(d) => {
                    assert!(depth > 10, "{depth}: {}", d[0].message);
                    assert_eq!(d[0].code, "E-syntax");
                    assert!(
                        d[0].message.contains("nested too deeply"),
                        "{}",
                        d[0].message
                    );
                }
            }
        }
    }
}

#[test]
fn crlf_and_a_byte_order_mark_are_fine() {
    let text = "\u{feff}input http {\r\n  listen = \"x\"\r\n}\r\nmatch \"**\" null { }\r\n";
    compile_str(
        "crlf.conf",
        text,
        Path::new("."),
        &common::registry(),
        &Options::default(),
    )
    .unwrap_or_else(|d| panic!("{}", ulog_lang::render_all(&d)));
    let d = compile_str(
        "crlf.conf",
        "input http {\r\n  lsten = \"x\"\r\n}\r\n",
        Path::new("."),
        &common::registry(),
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(d[0].line_col(), Some(("crlf.conf".into(), 2, 3)));
    assert!(
        d[0].render().contains("2 |   lsten = \"x\"\n"),
        "{}",
        d[0].render()
    );
}
