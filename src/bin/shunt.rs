//! The `shunt` executable: the CNI plugin the runtime runs from its bin dir.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

fn main() -> ExitCode {
    shunt::logging::init(log::LevelFilter::Info);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(first) = args.first() {
        // Run by hand: the runtime never passes arguments.
        return command(first, &args[1..]);
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

/// `shunt plan`, `shunt inspect`, `shunt --version`: for people, not for the runtime.
fn command(name: &str, rest: &[String]) -> ExitCode {
    let result = match name {
        "--version" | "-V" => Ok(format!("shunt {}\n", env!("CARGO_PKG_VERSION"))),
        "plan" => shunt::cli::plan_command(rest),
        "inspect" => shunt::cli::inspect_command(rest),
        "--help" | "-h" | "help" => Ok(format!(
            "shunt: a CNI chained plugin; the container runtime runs it with CNI_COMMAND set.\n{}\n",
            shunt::cli::USAGE
        )),
        other => Err(shunt::cli::CliError::Usage(format!(
            "unknown command {other:?}"
        ))),
    };
    match result {
        Ok(text) => match write_stdout(text.trim_end()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shunt: {e:#}");
                ExitCode::FAILURE
            }
        },
        // A drift report is the command's output, not a complaint.
        Err(shunt::cli::CliError::Drift(report)) => {
            let _ = write_stdout(report.trim_end());
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("shunt: {e}");
            ExitCode::from(e.exit_code())
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
