//! A registry with a few plugin specs and do-nothing factories, so the tests
//! exercise the engine's real validation without depending on the plugins
//! crate.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ulog_engine::params::{ParamKind, ParamSpec, PluginKind, PluginSpec};
use ulog_engine::{
    async_trait, Batch, Delivery, Filter, Input, InputContext, Output, PluginError, Registry,
    Rejected,
};
use ulog_lang::Options;

struct NopInput;

#[async_trait]
impl Input for NopInput {
    async fn run(self: Box<Self>, _ctx: InputContext) -> Result<(), PluginError> {
        Ok(())
    }
}

struct NopFilter;

#[async_trait]
impl Filter for NopFilter {
    async fn filter(
        &self,
        _batch: &mut Batch,
        _rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        Ok(())
    }
}

struct NopOutput;

#[async_trait]
impl Output for NopOutput {
    async fn write(&mut self, _batch: &Batch) -> Delivery {
        Delivery::Delivered
    }
}

/// http, dummy, stdin inputs; record, grep filters; file, stdout, null
/// outputs (plus the engine's relabel).
pub fn registry() -> Registry {
    let mut r = Registry::new();
    let input = |spec: PluginSpec, r: &mut Registry| {
        r.add_input(spec, |_, _| Ok(Box::new(NopInput) as Box<dyn Input>))
    };
    input(
        PluginSpec::new(PluginKind::Input, "http", "HTTP")
            .param(ParamSpec::with_default(
                "listen",
                ParamKind::Str,
                "127.0.0.1:9880",
                "address",
            ))
            .param(ParamSpec::optional("tag", ParamKind::Str, "tag")),
        &mut r,
    );
    input(
        PluginSpec::new(PluginKind::Input, "dummy", "test events")
            .param(ParamSpec::required("tag", ParamKind::Str, "tag"))
            .param(ParamSpec::with_default(
                "rate",
                ParamKind::Int,
                1,
                "per second",
            ))
            .param(ParamSpec::optional("record", ParamKind::Map, "the event")),
        &mut r,
    );
    input(
        PluginSpec::new(PluginKind::Input, "stdin", "lines")
            .param(ParamSpec::required("tag", ParamKind::Str, "tag"))
            .param(ParamSpec::with_default(
                "format",
                ParamKind::OneOf(&["json", "text"]),
                "text",
                "how",
            )),
        &mut r,
    );
    let filter = |spec: PluginSpec, r: &mut Registry| {
        r.add_filter(spec, |_, _| Ok(Arc::new(NopFilter) as Arc<dyn Filter>))
    };
    filter(
        PluginSpec::new(PluginKind::Filter, "record", "edit fields")
            .param(ParamSpec::optional("set", ParamKind::Map, "fields to set"))
            .param(ParamSpec::optional(
                "remove",
                ParamKind::List(Box::new(ParamKind::Str)),
                "fields to remove",
            )),
        &mut r,
    );
    filter(
        PluginSpec::new(PluginKind::Filter, "grep", "keep matching")
            .param(ParamSpec::required("key", ParamKind::Str, "field"))
            .param(ParamSpec::required("regex", ParamKind::Regex, "pattern")),
        &mut r,
    );
    let output = |spec: PluginSpec, r: &mut Registry| {
        r.add_output(spec, |_, _| Ok(Box::new(NopOutput) as Box<dyn Output>))
    };
    output(
        PluginSpec::new(PluginKind::Output, "file", "files")
            .param(ParamSpec::required("path", ParamKind::Str, "where"))
            .param(ParamSpec::with_default(
                "format",
                ParamKind::OneOf(&["json", "msgpack"]),
                "json",
                "how",
            ))
            .param(ParamSpec::with_default(
                "flush_interval",
                ParamKind::Duration,
                Duration::from_secs(1),
                "when",
            ))
            .param(ParamSpec::optional("max_size", ParamKind::Size, "rotate")),
        &mut r,
    );
    output(
        PluginSpec::new(PluginKind::Output, "stdout", "print").param(ParamSpec::with_default(
            "format",
            ParamKind::OneOf(&["json", "text"]),
            "json",
            "how",
        )),
        &mut r,
    );
    output(PluginSpec::new(PluginKind::Output, "null", "drop"), &mut r);
    r
}

/// A fixed environment: `HOME_DIR=/home/u`, `EMPTY=` and nothing else.
pub fn options() -> Options {
    Options::with_vars([("HOME_DIR", "/home/u"), ("EMPTY", "")])
}
