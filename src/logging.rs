//! Logging: every record to syslog (when the node has one), to stderr, and to the installer's
//! log socket when the conflist names one; never to stdout, which belongs to the runtime.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};
use syslog::{Facility, Formatter3164, LoggerBackend};

/// The installer's socket, once the conflist entry has named it: `shunt-install` prints what
/// arrives there on its own stdout, so the plugin's lines show in `kubectl logs`.
static RELAY: OnceLock<UnixDatagram> = OnceLock::new();

/// Sends every later record to the datagram socket at `path` too. Best effort and never
/// blocking: with no installer listening, the lines still reach stderr and syslog.
pub fn relay_to(path: &Path) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    if sock.set_nonblocking(true).is_ok() && sock.connect(path).is_ok() {
        let _ = RELAY.set(sock);
    }
}

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
        if let Some(relay) = RELAY.get() {
            let _ = relay.send(format!("{} {msg}", record.level()).as_bytes());
        }
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
