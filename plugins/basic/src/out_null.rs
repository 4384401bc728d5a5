//! `output null`: throws events away.
//!
//! For benchmarks (the cost of everything but the destination), for muting a
//! noisy tag with a `match`, and as the cheapest possible sink: `write` only
//! adds the batch length to a counter, touching no event.

use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, Output, Params, PluginError,
    PluginKind, PluginSpec, Registry,
};

/// The plugin's documentation and (empty) parameter list.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Output,
        "null",
        "Discards every event it receives, counting them. Use it to drop a tag on purpose \
         or to measure a pipeline without a destination's cost.",
    )
}

/// Registers `output null`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |_: &Params, _: &BuildContext| {
        Ok::<_, BuildError>(Box::new(NullOutput::default()) as Box<dyn Output>)
    });
}

/// The discarding output; keeps only a count.
#[derive(Debug, Default)]
pub struct NullOutput {
    discarded: u64,
}

impl NullOutput {
    /// Events discarded so far.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }
}

#[async_trait]
impl Output for NullOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        self.discarded += batch.len() as u64;
        Delivery::Delivered
    }

    async fn shutdown(&mut self) -> Result<(), PluginError> {
        tracing::debug!(events = self.discarded, "null output discarded events");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ulog_engine::{Event, EventTime, Record, Tag};

    #[tokio::test]
    async fn counts_and_delivers() {
        let mut out = NullOutput::default();
        let batch = Batch::new(
            Tag::new_unchecked("t"),
            vec![Event::new(EventTime::now(), Record::new()); 3],
        );
        assert!(matches!(out.write(&batch).await, Delivery::Delivered));
        assert!(matches!(out.write(&batch).await, Delivery::Delivered));
        assert_eq!(out.discarded(), 6);
    }
}
