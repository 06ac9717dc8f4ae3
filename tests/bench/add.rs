//! ADD against its floor, in one run: `cargo bench --bench add` (as root).
//!
//! Three arms, interleaved pod by pod, each in a fresh netns:
//! - shunt: the release binary run as the runtime runs it (ADD, then CHECK, then DEL);
//! - floor: one plain `iptables-restore --noflush` of the identical rules per family, from a
//!   thread already in the netns (no plugin process, no parsing, no planning);
//! - per-rule: the same chains and rules as one `iptables` process each (the `iptables` crate),
//!   the way per-rule plugins apply them;
//! - process start: `/bin/true` run exactly as the plugin is run (same environment and pipes),
//!   the price of being an exec'd CNI plugin at all, which no plugin can avoid.
//!
//! Then the peak RSS of one ADD and the size of the stripped binary. SHUNT_BENCH_PODS sets the
//! number of pods per arm (default 200); SHUNT_BENCH_DUAL=1 gives every pod an IPv6 address too.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use shunt::apply::Iptables;
use shunt::cni::PodRef;
use shunt::config::BackendChoice;
use shunt::config::PluginConfig;
use shunt::netns::Netns;
use shunt::plan::{plan, render_create, Family, Plan};
use shunt::profiles::decide;
use shunt::settings::Decision;

const SHUNT: &str = env!("CARGO_BIN_EXE_shunt");

struct Ns(String);

impl Ns {
    fn new(tag: &str, i: usize) -> Ns {
        let name = format!("shunt-bench-{tag}-{}-{i}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} (run as root)");
        Ns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    fn handle(&self) -> Netns {
        Netns::open(self.path().as_ref()).expect("open netns")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn pod_ips(dual: bool) -> Vec<&'static str> {
    if dual {
        vec!["10.244.1.7", "fd00:10:244:1::7"]
    } else {
        vec!["10.244.1.7"]
    }
}

fn conf(netns: &str, ips: &[&str], log_level: &str) -> String {
    let ips: Vec<_> = ips
        .iter()
        .map(|ip| json!({"address": format!("{ip}/{}", if ip.contains(':') { 64 } else { 24 }), "interface": 1}))
        .collect();
    json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "shunt",
        "logLevel": log_level,
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"shunt.dev/redirect": "enabled"}},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": netns}],
            "ips": ips
        }
    })
    .to_string()
}

/// Runs the plugin like a runtime does; returns wall time and stderr.
fn run_shunt(command: &str, netns: &str, stdin: &str) -> (Duration, String) {
    run_as_plugin(SHUNT, command, netns, stdin)
}

fn run_as_plugin(program: &str, command: &str, netns: &str, stdin: &str) -> (Duration, String) {
    let started = Instant::now();
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "bench")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod;K8S_POD_UID=1",
        )
        .stdout(Stdio::piped());
    let out = feed(&mut cmd, stdin);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{command} failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (took, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `cmd` with `input` on its stdin and its stderr captured.
fn feed(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // A program that does not read its stdin (/bin/true) may close it first.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes());
    child.wait_with_output().expect("wait")
}

/// A plain `iptables-restore` of the same text, as anyone would run it: no lock-file or NSS
/// arrangements, no plugin process around it.
fn floor(ns: &Netns, ipt: &Iptables, plan: &Plan) -> Duration {
    let inputs: Vec<(PathBuf, String)> = plan
        .families
        .iter()
        .map(|fp| (ipt.restore_path(fp.family), render_create(fp)))
        .collect();
    ns.run(|| {
        let started = Instant::now();
        for (tool, text) in &inputs {
            let mut cmd = Command::new(tool);
            cmd.args(["--noflush", "--wait=10"]).stdout(Stdio::null());
            let out = feed(&mut cmd, text);
            assert!(out.status.success(), "floor restore failed");
        }
        started.elapsed()
    })
    .expect("enter netns")
}

fn per_rule(ns: &Netns, plan: &Plan) -> Duration {
    ns.run(|| {
        let started = Instant::now();
        for fp in &plan.families {
            let ipt = iptables::IPTables {
                cmd: if fp.family == Family::V4 {
                    "iptables"
                } else {
                    "ip6tables"
                },
                has_check: true,
                has_wait: true,
                is_numeric: true,
            };
            for t in &fp.tables {
                for c in &t.chains {
                    ipt.new_chain(t.table.name(), c.name())
                        .expect("iptables -N");
                }
                for r in &t.rules {
                    ipt.append(t.table.name(), r.chain.name(), &r.args.join(" "))
                        .expect("iptables -A");
                }
            }
        }
        started.elapsed()
    })
    .expect("enter netns")
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e3
}

struct Arm {
    name: String,
    samples: Vec<Duration>,
}

impl Arm {
    fn new(name: impl Into<String>) -> Arm {
        Arm {
            name: name.into(),
            samples: Vec::new(),
        }
    }
    fn p(&mut self, p: f64) -> f64 {
        self.samples.sort();
        pct(&self.samples, p)
    }
}

/// Peak RSS of every child waited for so far, in KiB (the kernel keeps the maximum).
fn children_max_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| u.max_rss())
        .unwrap_or(0)
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark creates netns: run it as root"
    );
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list their tests.
    }
    let pods: usize = std::env::var("SHUNT_BENCH_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dual = std::env::var_os("SHUNT_BENCH_DUAL").is_some();
    let ips = pod_ips(dual);

    // The same plan the plugin computes for these pods.
    let annotations = BTreeMap::from([("shunt.dev/redirect".to_string(), "enabled".to_string())]);
    let pod = PodRef {
        namespace: Some("bench".into()),
        ..PodRef::default()
    };
    let Ok(Decision::Redirect { settings, .. }) =
        decide(&pod, Some(&annotations), &PluginConfig::default())
    else {
        panic!("benchmark pod is not captured");
    };
    let addrs: Vec<IpAddr> = ips.iter().map(|s| s.parse().expect("ip")).collect();
    let the_plan = plan(&settings, &addrs);
    let ipt = Iptables::resolve(BackendChoice::Auto).expect("iptables tools");

    // Peak RSS first, before the bench process has waited for anything big: one ADD with the
    // debug line that reports shunt's own peak, and the children maximum for the whole tree.
    let rss_ns = Ns::new("rss", 0);
    let (_, stderr) = run_shunt("ADD", &rss_ns.path(), &conf(&rss_ns.path(), &ips, "debug"));
    let tree_rss = children_max_rss_kib();
    let own_rss: i64 = stderr
        .lines()
        .find_map(|l| l.split("peak RSS ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("shunt reports its peak RSS at debug level");
    drop(rss_ns);

    // Warm-up: page cache, kernel modules, first-use costs.
    for i in 0..5 {
        let ns = Ns::new("warm", i);
        run_shunt("ADD", &ns.path(), &conf(&ns.path(), &ips, "warn"));
        floor(&Ns::new("warmf", i).handle(), &ipt, &the_plan);
        per_rule(&Ns::new("warmr", i).handle(), &the_plan);
    }

    let mut add = Arm::new("ADD (shunt binary)");
    let mut check = Arm::new("CHECK (shunt binary)");
    let mut del = Arm::new("DEL (shunt binary)");
    let mut flo = Arm::new("floor: iptables-restore");
    let mut start = Arm::new("process start: /bin/true as plugin");
    let mut rule = Arm::new(format!(
        "per-rule: {} iptables calls",
        the_plan.rule_count()
            + the_plan
                .families
                .iter()
                .map(|f| f.tables[0].chains.len())
                .sum::<usize>()
    ));
    for i in 0..pods {
        let a = Ns::new("shunt", i);
        let b = Ns::new("floor", i);
        let c = Ns::new("rule", i);
        // Rotate the order so no arm always runs first (cache, scheduler).
        for step in 0..3 {
            match (i + step) % 3 {
                0 => {
                    let input = conf(&a.path(), &ips, "warn");
                    add.samples.push(run_shunt("ADD", &a.path(), &input).0);
                    check.samples.push(run_shunt("CHECK", &a.path(), &input).0);
                    del.samples.push(run_shunt("DEL", &a.path(), &input).0);
                }
                1 => {
                    flo.samples.push(floor(&b.handle(), &ipt, &the_plan));
                    let input = conf(&b.path(), &ips, "warn");
                    start
                        .samples
                        .push(run_as_plugin("/bin/true", "ADD", &b.path(), &input).0);
                }
                _ => rule.samples.push(per_rule(&c.handle(), &the_plan)),
            }
        }
    }

    let size = std::fs::metadata(SHUNT).map(|m| m.len()).unwrap_or(0);
    let families: Vec<&str> = the_plan.families.iter().map(|f| f.family.name()).collect();
    println!(
        "shunt ADD benchmark: {pods} fresh netns per arm, interleaved; {}; iptables-{}; {} rules",
        families.join("+"),
        ipt.backend.name(),
        the_plan.rule_count()
    );
    println!("{:<34} {:>8} {:>8}", "", "p50 ms", "p99 ms");
    for arm in [
        &mut add, &mut check, &mut del, &mut flo, &mut start, &mut rule,
    ] {
        let (p50, p99) = (arm.p(0.5), arm.p(0.99));
        println!("{:<34} {p50:>8.2} {p99:>8.2}", arm.name);
    }
    let (add50, flo50, rule50, start50) = (add.p(0.5), flo.p(0.5), rule.p(0.5), start.p(0.5));
    println!(
        "ADD p50 / floor p50:     {:.2}x   (target <= 1.35x)",
        add50 / flo50
    );
    println!(
        "ADD p50 - floor p50 - process start p50: {:.2} ms of shunt's own work",
        add50 - flo50 - start50
    );
    println!(
        "per-rule p50 / ADD p50:  {:.1}x   (target >= 7x)",
        rule50 / add50
    );
    println!(
        "peak RSS of one ADD:     shunt {:.1} MiB (target <= 6 MiB); with its iptables-restore child {:.1} MiB",
        own_rss as f64 / 1024.0,
        tree_rss as f64 / 1024.0
    );
    println!(
        "stripped binary:         {:.2} MiB (target <= 4 MiB) {SHUNT}",
        size as f64 / (1024.0 * 1024.0)
    );
}
