//! The `shunt` executable: the CNI plugin the runtime runs from its bin dir.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

const USAGE: &str = "\
shunt: a CNI chained plugin; the container runtime runs it with CNI_COMMAND set.
  shunt --version   print the version
See README.md for the conflist entry and the pod annotations.";

fn main() -> ExitCode {
    shunt::logging::init(log::LevelFilter::Info);
    let mut args = std::env::args().skip(1);
    if let Some(arg) = args.next() {
        let text = match arg.as_str() {
            "--version" | "-V" => format!("shunt {}", env!("CARGO_PKG_VERSION")),
            _ => USAGE.to_owned(),
        };
        eprintln!("{text}");
        return if arg == "--version" || arg == "-V" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        };
    }
    std::panic::set_hook(Box::new(|info| {
        log::error!("panic: {info}");
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            shunt::plugin::panic_reply(&info.to_string())
        );
    }));

    let reply = shunt::plugin::run(|k| std::env::var(k).ok(), std::io::stdin().lock());
    match write_stdout(&reply.stdout) {
        Ok(()) => ExitCode::from(reply.exit_code),
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("writing the CNI reply to stdout")
}
