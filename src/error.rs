//! The one place where failures become CNI error codes and exit statuses.
//!
//! Codes below 100 are the spec's; 100 and up are shunt's own and are listed in README.md.

use crate::addrs::AddrError;
use crate::apply::ApplyError;
use crate::cni::ProtocolError;
use crate::config::ConfigError;
use crate::netns::NetnsError;
use crate::plan::Family;
use crate::saved::Drift;
use crate::settings::SettingsError;

pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const INVALID_ENV: u32 = 4;
pub const IO_FAILURE: u32 = 5;
pub const DECODE_FAILURE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const NOT_AVAILABLE: u32 = 50;
pub const TOOLS_MISSING: u32 = 100;
pub const APPLY_FAILED: u32 = 101;
pub const CHECK_FAILED: u32 = 102;
pub const NO_POD_ADDRESS: u32 = 103;
pub const INTERNAL: u32 = 199;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Addr(#[from] AddrError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("prevResult is missing: shunt is a chained plugin and must come after the primary network plugin in the conflist")]
    NotChained,
    #[error(
        "pod asked for redirection but has no IP address (none in prevResult, none in its netns)"
    )]
    NoPodAddress,
    #[error("shunt's rules in the pod netns differ from the plan: {}", summarize(.0))]
    Drift(Vec<(Family, Drift)>),
    #[error("not ready: {0}")]
    NotReady(ApplyError),
}

fn summarize(drift: &[(Family, Drift)]) -> String {
    const SHOWN: usize = 8;
    let mut parts: Vec<String> = drift
        .iter()
        .take(SHOWN)
        .map(|(f, d)| format!("{}: {d}", f.name()))
        .collect();
    if drift.len() > SHOWN {
        parts.push(format!("and {} more", drift.len() - SHOWN));
    }
    parts.join("; ")
}

impl Error {
    pub fn code(&self) -> u32 {
        match self {
            Error::Protocol(p) => match p {
                ProtocolError::MissingEnv { .. } | ProtocolError::InvalidEnv { .. } => INVALID_ENV,
                ProtocolError::Stdin(_) => IO_FAILURE,
                ProtocolError::StdinTooLarge
                | ProtocolError::Decode(_)
                | ProtocolError::NotAnObject
                | ProtocolError::WrongType { .. } => DECODE_FAILURE,
                ProtocolError::MissingVersion => INVALID_CONFIG,
                ProtocolError::UnsupportedVersion(_)
                | ProtocolError::CommandNotInVersion { .. } => INCOMPATIBLE_VERSION,
            },
            Error::Config(_) | Error::Settings(_) | Error::NotChained => INVALID_CONFIG,
            Error::Addr(AddrError::Netlink(_)) => IO_FAILURE,
            Error::Addr(_) => INVALID_CONFIG,
            Error::Netns(n) => netns_code(n),
            Error::Apply(a) => match a {
                ApplyError::ToolsMissing(_) => TOOLS_MISSING,
                ApplyError::Netns(n) => netns_code(n),
                ApplyError::Spawn { .. } => IO_FAILURE,
                ApplyError::Restore { .. } | ApplyError::Save { .. } | ApplyError::Routing(_) => {
                    APPLY_FAILED
                }
            },
            Error::NoPodAddress => NO_POD_ADDRESS,
            Error::Drift(_) => CHECK_FAILED,
            Error::NotReady(_) => NOT_AVAILABLE,
        }
    }
}

fn netns_code(e: &NetnsError) -> u32 {
    match e {
        NetnsError::NotFound(_) | NetnsError::NotANetns(_) => INVALID_ENV,
        NetnsError::Open { .. } | NetnsError::Enter { .. } => IO_FAILURE,
    }
}
