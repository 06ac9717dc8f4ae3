//! The installer's output: one JSON object per line on stdout (what `kubectl logs` shows), for
//! its own records and for the plugin's lines relayed through the log socket.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};
use serde_json::{json, Value};

/// RFC 3339 UTC with milliseconds, from the system clock.
pub fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Prints one line: `{"ts","level","source","msg", ...fields}`.
pub fn emit(level: &str, source: &str, msg: &str, fields: Value) {
    let mut line = json!({"ts": timestamp(), "level": level, "source": source, "msg": msg});
    if let (Some(line), Value::Object(extra)) = (line.as_object_mut(), fields) {
        line.extend(extra);
    }
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

struct JsonLogger;

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            emit(&level, "installer", &record.args().to_string(), Value::Null);
        }
    }

    fn flush(&self) {}
}

pub fn init(level: LevelFilter) {
    let _ = log::set_boxed_logger(Box::new(JsonLogger));
    log::set_max_level(level);
}

/// Binds the socket the plugin sends its lines to (see `shunt::logging::relay_to`) and prints
/// every datagram as a `source: plugin` line, on a thread of its own, for the process's life.
pub fn relay_plugin_logs(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let sock = UnixDatagram::bind(path)?;
    std::thread::Builder::new()
        .name("plugin-logs".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                let (level, msg) = text.split_once(' ').unwrap_or(("INFO", &text));
                emit(&level.to_ascii_lowercase(), "plugin", msg, Value::Null);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339() {
        let ts = super::timestamp();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.starts_with("20") && ts.ends_with('Z'), "{ts}");
        assert_eq!(&ts[10..11], "T");
    }
}
