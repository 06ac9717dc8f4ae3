//! `shunt-install`: the installer DaemonSet's process. Every flag can also be given as an
//! environment variable, `SHUNT_` + the flag's name upper-cased with `_` for `-` (what the
//! manifests use); a flag wins over its variable.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use shunt::install::{self, health, output, Installer, Mode, Options, Preset, Repair};

const USAGE: &str = "\
usage: shunt-install [flags]

  --preset NAME            default | k3s | microk8s | gke: the distribution's CNI directories
  --cni-bin-dir DIR        where the runtime finds CNI plugins (preset's, else /opt/cni/bin)
  --cni-conf-dir DIR       where the runtime reads CNI configs (preset's, else /etc/cni/net.d)
  --primary FILE           the primary config's file name (default: the first one the runtime
                           would load)
  --mode chained|standalone
                           chained (default): append shunt to the primary's plugin list;
                           standalone: write a conflist of its own (Multus, OpenShift)
  --standalone-name FILE   the standalone conflist's name (default 90-shunt.conflist)
  --plugin-binary PATH     the shunt binary to install (default: `shunt` beside this program)
  --state-dir DIR          the install record, for byte-exact restores (default /run/shunt)
  --log-socket PATH        relay the plugin's log lines to stdout (default /run/shunt/log.sock;
                           `off` to disable)
  --health-addr ADDR       /healthz, /readyz, /metrics (default 0.0.0.0:9925; `off`)
  --cri-socket PATH        the runtime's CRI socket (default /run/containerd/containerd.sock)
  --repair program|report|off
                           pods already running without the rules they ask for (default program)
  --host-root DIR          where the host's / is mounted (DaemonSet: /host); the repair pass runs
                           the plugin chrooted there, with the host's iptables
  --keep-on-exit           leave the entry and the binary in place on SIGTERM (rolling upgrades)
  --once                   install (binary and entry) and exit: 0 when in place, 1 when not;
                           nothing is watched or removed afterwards
  --exclude-namespaces A,B the plugin's excludeNamespaces (default kube-system)
  --log-level LEVEL        the plugin's and the installer's level (default info)
  --iptables-backend B     the plugin's iptablesBackend: auto | nft | legacy (default auto)
  --plugin-config JSON     more keys for the plugin's entry, as a JSON object: profiles, istio,
                           linkerd, defaults (see README.md)
  --resync-seconds N       full check without events (default 30)
";

/// Flags that take no value.
const SWITCHES: &[&str] = &["keep-on-exit", "once"];
const VALUED: &[&str] = &[
    "preset",
    "cni-bin-dir",
    "cni-conf-dir",
    "primary",
    "mode",
    "standalone-name",
    "plugin-binary",
    "state-dir",
    "log-socket",
    "health-addr",
    "cri-socket",
    "repair",
    "host-root",
    "exclude-namespaces",
    "log-level",
    "iptables-backend",
    "plugin-config",
    "resync-seconds",
];

struct Args(Map<String, Value>);

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut map = Map::new();
        for name in VALUED.iter().chain(SWITCHES) {
            let var = format!("SHUNT_{}", name.to_uppercase().replace('-', "_"));
            if let Ok(v) = std::env::var(&var) {
                if !v.is_empty() {
                    map.insert((*name).into(), json!(v));
                }
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                print!("{USAGE}");
                std::process::exit(0);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?}\n\n{USAGE}");
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            if SWITCHES.contains(&name) {
                map.insert(name.into(), json!(inline.unwrap_or_else(|| "true".into())));
            } else if VALUED.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .with_context(|| format!("--{name} needs a value"))?,
                };
                map.insert(name.into(), json!(value));
            } else {
                bail!("unknown flag --{name}\n\n{USAGE}");
            }
        }
        Ok(Args(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    fn flag(&self, name: &str) -> anyhow::Result<bool> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => bail!("--{name}: expected true or false, found {other:?}"),
        }
    }

    fn off_or_path(&self, name: &str, default: &str) -> Option<String> {
        match self.get(name).unwrap_or(default) {
            "off" | "" => None,
            v => Some(v.to_owned()),
        }
    }
}

fn options(args: &Args) -> anyhow::Result<Options> {
    let preset = match args.get("preset") {
        None => Preset::Default,
        Some(p) => Preset::parse(p)
            .with_context(|| format!("--preset {p:?}: expected default, k3s, microk8s or gke"))?,
    };
    let (bin, conf) = preset.dirs();
    let mode = match args.get("mode").unwrap_or("chained") {
        "chained" => Mode::Chained,
        "standalone" => Mode::Standalone(
            args.get("standalone-name")
                .unwrap_or("90-shunt.conflist")
                .to_owned(),
        ),
        other => bail!("--mode {other:?}: expected chained or standalone"),
    };
    let repair = match args.get("repair").unwrap_or("program") {
        "program" => Repair::Program,
        "report" => Repair::Report,
        "off" => Repair::Off,
        other => bail!("--repair {other:?}: expected program, report or off"),
    };
    let plugin_binary = match args.get("plugin-binary") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name("shunt"),
    };
    let level = args.get("log-level").unwrap_or("info");
    let namespaces: Vec<&str> = args
        .get("exclude-namespaces")
        .unwrap_or("kube-system")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut plugin_config = Map::new();
    if let Some(extra) = args.get("plugin-config").filter(|s| !s.trim().is_empty()) {
        let Ok(Value::Object(extra)) = serde_json::from_str::<Value>(extra) else {
            bail!("--plugin-config {extra:?}: expected a JSON object");
        };
        for (k, v) in extra {
            // These have flags of their own; two sources for one key would hide one of them.
            if let Some(flag) = match k.as_str() {
                "excludeNamespaces" => Some("--exclude-namespaces"),
                "logLevel" => Some("--log-level"),
                "iptablesBackend" => Some("--iptables-backend"),
                "logSocket" => Some("--log-socket"),
                "type" | "capabilities" => Some("(none: the installer writes it)"),
                _ => None,
            } {
                bail!("--plugin-config: set {k} with {flag}");
            }
            plugin_config.insert(k, v);
        }
    }
    plugin_config.insert("excludeNamespaces".into(), json!(namespaces));
    plugin_config.insert("logLevel".into(), json!(level));
    plugin_config.insert(
        "iptablesBackend".into(),
        json!(args.get("iptables-backend").unwrap_or("auto")),
    );
    // The plugin would refuse these at every ADD; refusing them here fails the rollout instead.
    shunt::config::PluginConfig::from_conf(&plugin_config)
        .map_err(|e| anyhow::anyhow!("plugin settings: {e}"))?;
    let resync: u64 = args
        .get("resync-seconds")
        .unwrap_or("30")
        .parse()
        .context("--resync-seconds: expected a whole number")?;
    Ok(Options {
        bin_dir: args.get("cni-bin-dir").unwrap_or(bin).into(),
        conf_dir: args.get("cni-conf-dir").unwrap_or(conf).into(),
        primary: args.get("primary").map(str::to_owned),
        mode,
        plugin_binary,
        state_dir: args.get("state-dir").unwrap_or("/run/shunt").into(),
        log_socket: args
            .off_or_path("log-socket", "/run/shunt/log.sock")
            .map(PathBuf::from),
        health_addr: args.off_or_path("health-addr", "0.0.0.0:9925"),
        cri_socket: args
            .get("cri-socket")
            .unwrap_or(shunt::cri::CONTAINERD_SOCKET)
            .into(),
        repair,
        host_root: args.get("host-root").map(PathBuf::from),
        keep_on_exit: args.flag("keep-on-exit")?,
        plugin_config,
        resync: Duration::from_secs(resync.max(1)),
    })
}

fn main() {
    let level = std::env::var("SHUNT_LOG_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    output::init(level);
    if let Err(e) = real_main() {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let opts = options(&args)?;
    if let Some(level) = args.get("log-level").and_then(|l| l.parse().ok()) {
        log::set_max_level(level);
    }
    // Before any thread starts, so every thread inherits the mask and only the signalfd sees them.
    let signals = install::block_signals().context("blocking SIGTERM/SIGINT")?;
    let mut installer = Installer::new(opts);
    if args.flag("once")? {
        return if installer.reconcile() {
            Ok(())
        } else {
            bail!("shunt is not in place (see the lines above)")
        };
    }
    let opts = &installer.opts;
    log::info!(
        "starting: bin dir {}, conf dir {}, mode {:?}, repair {:?}, entry {}",
        opts.bin_dir.display(),
        opts.conf_dir.display(),
        opts.mode,
        opts.repair,
        Value::Object(installer.entry().clone())
    );
    if let Some(path) = &opts.log_socket {
        output::relay_plugin_logs(path)
            .with_context(|| format!("binding the plugin log socket {}", path.display()))?;
    }
    if let Some(addr) = &opts.health_addr {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("binding --health-addr {addr}"))?;
        health::serve(listener, installer.status.clone())?;
    }
    install::run(installer, signals)
}
