//! The installer's HTTP endpoints: `/healthz` (the process runs), `/readyz` (shunt's entry and
//! binary are verified in place) and `/metrics` (Prometheus text). A few requests a minute from
//! the kubelet and a scraper do not need an HTTP stack: one thread, one request per connection.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the endpoints report, updated by the installer as it works.
#[derive(Default)]
pub struct Status {
    pub ready: AtomicBool,
    /// Times the entry was written into a primary that lacked it (the first install included).
    pub splices: AtomicU64,
    /// Times the binary was (re)written because it was missing or differed.
    pub binary_writes: AtomicU64,
    /// Times a writer other than the installer was seen dropping the entry within the fight
    /// window, and the installer backed off.
    pub backoffs: AtomicU64,
    /// Sandboxes found running without the rules they asked for, and those then programmed.
    pub repair_missing: AtomicU64,
    pub repair_programmed: AtomicU64,
    pub repair_failed: AtomicU64,
}

impl Status {
    pub fn metrics(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ready = u8::from(self.ready.load(Ordering::Relaxed));
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "shunt_install_ready",
            "gauge",
            "1 when shunt's entry and binary are verified in place.",
            u64::from(ready),
        );
        metric(
            "shunt_install_splices_total",
            "counter",
            "Entries written into a primary config that lacked it (installs and re-splices).",
            g(&self.splices),
        );
        metric(
            "shunt_install_binary_writes_total",
            "counter",
            "Plugin binary copies because it was missing or differed.",
            g(&self.binary_writes),
        );
        metric(
            "shunt_install_backoffs_total",
            "counter",
            "Times another writer kept removing the entry and the installer backed off.",
            g(&self.backoffs),
        );
        metric(
            "shunt_install_repair_missing_total",
            "counter",
            "Running sandboxes found without the rules their annotations ask for.",
            g(&self.repair_missing),
        );
        metric(
            "shunt_install_repair_programmed_total",
            "counter",
            "Running sandboxes whose rules the installer programmed.",
            g(&self.repair_programmed),
        );
        metric(
            "shunt_install_repair_failed_total",
            "counter",
            "Running sandboxes the installer could not check or program.",
            g(&self.repair_failed),
        );
        out
    }
}

/// Serves the endpoints on `listener` from a thread of its own.
pub fn serve(listener: TcpListener, status: Arc<Status>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let (code, body) = match path {
                    "/healthz" => ("200 OK", "ok\n".to_owned()),
                    "/readyz" if status.ready.load(Ordering::Relaxed) => {
                        ("200 OK", "ready\n".to_owned())
                    }
                    "/readyz" => (
                        "503 Service Unavailable",
                        "shunt's entry or binary is not in place yet\n".to_owned(),
                    ),
                    "/metrics" => ("200 OK", status.metrics()),
                    _ => ("404 Not Found", "not found\n".to_owned()),
                };
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(())
}
