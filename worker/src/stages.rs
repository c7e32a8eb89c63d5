//! How long each stage of one run's path took, logged at debug level at its end: the breakdown
//! behind a latency figure, kept in the code so a slow run can be explained without a rebuild.

use std::time::{Duration, Instant};

use uuid::Uuid;

/// The stages of one run's path, each timed from the end of the one before.
pub(crate) struct Stages {
    what: &'static str,
    run: Uuid,
    last: Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Stages {
    pub(crate) fn new(what: &'static str, run: Uuid) -> Self {
        Self {
            what,
            run,
            last: Instant::now(),
            took: Vec::with_capacity(8),
        }
    }

    /// Ends the stage named `stage` now.
    pub(crate) fn mark(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.took.push((stage, now - self.last));
        self.last = now;
    }

    pub(crate) fn done(&self) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let stages: Vec<String> = self
            .took
            .iter()
            .map(|(stage, took)| format!("{stage} {:.2} ms", took.as_secs_f64() * 1e3))
            .collect();
        tracing::debug!(run = %self.run, stages = %stages.join(", "), "{}", self.what);
    }
}
