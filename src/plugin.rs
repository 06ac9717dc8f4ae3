//! The CNI verbs: what ADD, DEL, CHECK, STATUS, GC and VERSION do, from parsed input to the
//! text for stdout.

use std::io::Read;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{Map, Value};

use crate::addrs;
use crate::apply::{self, Iptables};
use crate::cni::{self, CniVersion, Command, Env, NetConf, ProtocolError};
use crate::config::PluginConfig;
use crate::error::{Error, INTERNAL};
use crate::netns::{Netns, NetnsError};
use crate::plan::{self, Plan};
use crate::profiles;
use crate::settings::{Decision, Settings};

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub stdout: String,
    pub exit_code: u8,
}

/// The request's cniVersion once known, so that even a panic can answer in it.
static VERSION: OnceLock<CniVersion> = OnceLock::new();

/// The CNI error JSON for a panic: the process is going down, but stdout still gets an answer.
pub fn panic_reply(msg: &str) -> String {
    let version = VERSION.get().copied().unwrap_or(CniVersion::LATEST);
    cni::render_error(version, INTERNAL, "internal error in shunt", msg)
}

/// Runs one plugin invocation.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: impl Read) -> Reply {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let result = cni::read_stdin(stdin).map_err(Error::from).and_then(|b| {
        bytes = b;
        dispatch(&get_env, &bytes, started)
    });
    if log::log_enabled!(log::Level::Debug) {
        let rss_kib = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map(|u| u.max_rss())
            .unwrap_or(0);
        log::debug!(
            "{} finished in {:.2} ms, peak RSS {rss_kib} KiB",
            get_env("CNI_COMMAND").unwrap_or_default(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    match result {
        Ok(stdout) => Reply {
            stdout,
            exit_code: 0,
        },
        Err(e) => {
            let version = VERSION
                .get()
                .copied()
                .unwrap_or_else(|| sniff_version(&bytes));
            let container = get_env("CNI_CONTAINERID").unwrap_or_default();
            let pod =
                cni::parse_cni_args(&get_env("CNI_ARGS").unwrap_or_default()).unwrap_or_default();
            log::error!(
                "{} pod {pod} container={container:?}: {e} (code {})",
                get_env("CNI_COMMAND").unwrap_or_default(),
                e.code()
            );
            Reply {
                stdout: cni::render_error(version, e.code(), &e.to_string(), ""),
                exit_code: 1,
            }
        }
    }
}

/// The cniVersion to answer an early error in: the request's, when it names a known one.
fn sniff_version(bytes: &[u8]) -> CniVersion {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .and_then(CniVersion::parse)
        })
        .unwrap_or(CniVersion::LATEST)
}

fn dispatch(
    get_env: &impl Fn(&str) -> Option<String>,
    bytes: &[u8],
    started: Instant,
) -> Result<String, Error> {
    let env = Env::from_lookup(get_env)?;
    if env.command == Command::Version {
        let version = cni::version_request(bytes)?;
        return Ok(cni::render_version(version));
    }
    let conf = NetConf::parse(bytes, env.command)?;
    let _ = VERSION.set(conf.cni_version);
    let cfg = match PluginConfig::from_conf(&conf.raw) {
        Ok(cfg) => cfg,
        // Teardown must not hinge on a config that ADD would have refused; DEL reads none of it.
        Err(e) if env.command == Command::Del => {
            log::warn!("DEL with an invalid shunt config ({e}); removing rules anyway");
            PluginConfig::default()
        }
        Err(e) => return Err(e.into()),
    };
    log::set_max_level(cfg.log_level);
    if let Some(path) = &cfg.log_socket {
        crate::logging::relay_to(path);
    }
    match env.command {
        Command::Add => add(&env, &conf, &cfg, started),
        Command::Del => del(&env).map(|()| String::new()),
        Command::Check => check(&env, &conf, &cfg).map(|()| String::new()),
        Command::Status => Iptables::resolve(cfg.iptables_backend)
            .and_then(|ipt| ipt.verify())
            .map(|()| String::new())
            .map_err(Error::NotReady),
        // shunt keeps no state outside pod netns, which die with their pods.
        Command::Gc => Ok(String::new()),
        Command::Version => Ok(cni::render_version(conf.cni_version)),
    }
}

fn netns_of(env: &Env) -> Result<Netns, Error> {
    let path = env
        .netns
        .as_deref()
        .ok_or(ProtocolError::MissingEnv { name: "CNI_NETNS" })?;
    Ok(Netns::open(path)?)
}

fn prev_result(conf: &NetConf) -> Result<&Map<String, Value>, Error> {
    conf.prev_result.as_ref().ok_or(Error::NotChained)
}

fn decide(env: &Env, conf: &NetConf, cfg: &PluginConfig) -> Result<Decision, Error> {
    Ok(profiles::decide(&env.pod, conf.annotations.as_ref(), cfg)?)
}

/// The plan for a captured pod: its addresses from prevResult, or from its netns if none.
fn plan_for(netns: &Netns, prev: &Map<String, Value>, s: &Settings) -> Result<Plan, Error> {
    let mut ips: Vec<IpAddr> = addrs::from_prev_result(prev)?;
    if ips.is_empty() {
        ips = netns.run(addrs::from_current_netns)??;
    }
    if ips.is_empty() {
        return Err(Error::NoPodAddress);
    }
    Ok(plan::plan(s, &ips))
}

fn add(env: &Env, conf: &NetConf, cfg: &PluginConfig, started: Instant) -> Result<String, Error> {
    let prev = prev_result(conf)?;
    let decision = decide(env, conf, cfg)?;
    let netns = netns_of(env)?;
    match decision {
        Decision::PassThrough(why) => {
            log::debug!(
                "ADD pod {} container={}: not captured: {why}",
                env.pod,
                env.container_id
            );
        }
        Decision::Redirect {
            profile,
            settings: s,
        } => {
            let plan = plan_for(&netns, prev, &s)?;
            let ipt = Iptables::resolve(cfg.iptables_backend)?;
            apply::install(&netns, &ipt, &plan)?;
            let families: Vec<&str> = plan.families.iter().map(|f| f.family.name()).collect();
            let mode = s.interception.name();
            let dns = s.dns_port.map(|p| format!(" dns→{p}")).unwrap_or_default();
            log::info!(
                "ADD pod {} container={}: captured by the {profile} profile ({mode}), outbound→{} inbound→{}{dns} proxy uid {} gid {} ({}, {} rules, iptables-{}) in {:.1} ms",
                env.pod,
                env.container_id,
                s.outbound_port,
                s.inbound_port,
                s.proxy_uid,
                s.proxy_gid.map_or_else(|| "-".to_owned(), |g| g.to_string()),
                families.join("+"),
                plan.rule_count(),
                ipt.backend.name(),
                started.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    Ok(cni::render_result(conf.cni_version, prev))
}

/// DEL always succeeds unless the request itself is malformed: the netns dies right after, with
/// any rule left in it, and a failing DEL would only keep the pod from being torn down.
fn del(env: &Env) -> Result<(), Error> {
    let Some(path) = env.netns.as_deref() else {
        return Ok(());
    };
    let netns = match Netns::open(path) {
        Ok(n) => n,
        Err(NetnsError::NotFound(_) | NetnsError::NotANetns(_)) => return Ok(()),
        Err(e) => {
            log::warn!(
                "DEL pod {} container={}: {e}; nothing removed",
                env.pod,
                env.container_id
            );
            return Ok(());
        }
    };
    let backends = Iptables::present();
    if backends.is_empty() {
        log::warn!(
            "DEL pod {} container={}: no iptables tools on this node; nothing removed",
            env.pod,
            env.container_id
        );
        return Ok(());
    }
    match apply::remove_all(&netns, &backends) {
        Ok(0) => {}
        Ok(n) => log::info!(
            "DEL pod {} container={}: removed shunt's rules ({n} rule sets)",
            env.pod,
            env.container_id
        ),
        Err(e) => log::error!(
            "DEL pod {} container={}: could not remove shunt's rules: {e}",
            env.pod,
            env.container_id
        ),
    }
    Ok(())
}

fn check(env: &Env, conf: &NetConf, cfg: &PluginConfig) -> Result<(), Error> {
    let prev = prev_result(conf)?;
    let decision = decide(env, conf, cfg)?;
    let netns = netns_of(env)?;
    let Decision::Redirect { settings: s, .. } = decision else {
        return Ok(());
    };
    let plan = plan_for(&netns, prev, &s)?;
    let ipt = Iptables::resolve(cfg.iptables_backend)?;
    let drift = apply::check(&netns, &ipt, &plan)?;
    if drift.is_empty() {
        Ok(())
    } else {
        Err(Error::Drift(drift))
    }
}
