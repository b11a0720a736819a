//! Progress of long work, reported by the library and drawn by the binary.

/// Receives progress of a stage. The binary draws a bar on a terminal and
/// nothing elsewhere; the library only counts.
pub trait Progress: Send + Sync {
    /// A new stage starts; `total` is known for most stages.
    fn start(&self, stage: &str, total: Option<u64>);
    fn advance(&self, n: u64);
    fn finish(&self);
}

/// Progress that goes nowhere (tests, `--json` pipelines).
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _stage: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}
