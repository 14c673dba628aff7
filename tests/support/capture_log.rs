//! The capturing logger of the test binaries that check what rpcenv logs
//! (`log_flood.rs`, `log_once.rs`): it keeps every line at `warn` and above, as
//! `"LEVEL target: message"`. Included with `#[path]`; a binary has one logger, so each
//! such test binary installs it once.

#![allow(clippy::disallowed_types)]

use std::sync::{Mutex, Once};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Keeps every line at `warn` and above.
struct Capture;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Log for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Warn
    }
    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}: {}", record.level(), record.target(), record.args());
            LINES.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

static LOGGER: Capture = Capture;

/// Installs the capturing logger as the process's logger (the first call; later calls
/// change nothing) and sets the `log` crate's maximum level to `max_level`.
pub(crate) fn install(max_level: LevelFilter) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| log::set_logger(&LOGGER).expect("the only logger"));
    log::set_max_level(max_level);
}

/// The lines captured so far.
pub(crate) fn lines() -> Vec<String> {
    LINES.lock().unwrap().clone()
}
