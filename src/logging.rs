//! Logging: every record to syslog (when the node has one) and to stderr, never to stdout,
//! which belongs to the runtime.

use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};
use syslog::{Facility, Formatter3164, LoggerBackend};

struct Logger {
    syslog: Option<Mutex<syslog::Logger<LoggerBackend, Formatter3164>>>,
    pid: u32,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        // stderr may be closed or a full pipe; losing a log line must not fail the pod.
        let _ = writeln!(
            std::io::stderr().lock(),
            "shunt[{}]: {} {msg}",
            self.pid,
            record.level()
        );
        if let Some(sys) = &self.syslog {
            let mut sys = sys.lock().unwrap_or_else(|p| p.into_inner());
            let _ = match record.level() {
                Level::Error => sys.err(&msg),
                Level::Warn => sys.warning(&msg),
                Level::Info => sys.info(&msg),
                Level::Debug | Level::Trace => sys.debug(&msg),
            };
        }
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`; `log::set_max_level` changes the level later.
pub fn init(level: LevelFilter) {
    let pid = std::process::id();
    let syslog = syslog::unix(Formatter3164 {
        facility: Facility::LOG_DAEMON,
        hostname: None,
        process: "shunt".into(),
        pid,
    })
    .ok()
    .map(Mutex::new);
    let _ = log::set_boxed_logger(Box::new(Logger { syslog, pid }));
    log::set_max_level(level);
}
