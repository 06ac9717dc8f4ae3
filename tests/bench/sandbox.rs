//! What shunt adds to a pod's start under a real runtime, in one run:
//! `cargo bench --bench sandbox` (as root, containerd installed).
//!
//! Two private containerds side by side, one whose chain is `bridge` → `portmap` and one whose
//! chain ends in shunt (the shipped entry). Pods that ask for redirection are created on both,
//! interleaved (ABBA, so neither arm always goes first) after a warm-up, and each is stopped and
//! removed before the next, so both runtimes stay at zero pods. The figure is the difference of
//! the RunPodSandbox medians, with the Hodges–Lehmann shift (the median of all pairwise
//! differences, steadier than a difference of medians) beside it. Pods differ by tens of ms
//! here, so the pod count (SHUNT_SANDBOX_PODS, default 200 per arm) is what makes the difference
//! meaningful, and the bootstrap interval printed with it says how meaningful.

#[path = "../common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::containerd::{Chain, Containerd};
use shunt::cri::Client;

const ANNOTATIONS: &[(&str, &str)] = &[("shunt.dev/redirect", "enabled")];

struct Arm {
    name: &'static str,
    ctd: Containerd,
    cri: Client,
    run: Vec<Duration>,
    teardown: Vec<Duration>,
}

impl Arm {
    fn new(name: &'static str, chain: Chain) -> Arm {
        let ctd = Containerd::start("bench", chain);
        let cri = ctd.client();
        Arm {
            name,
            ctd,
            cri,
            run: Vec::new(),
            teardown: Vec::new(),
        }
    }

    /// One pod: RunPodSandbox timed, then Stop + Remove timed apart.
    fn pod(&mut self, i: usize, record: bool) {
        let start = Instant::now();
        let pod = self
            .ctd
            .run_pod(&mut self.cri, &format!("bench-{i}"), "default", ANNOTATIONS)
            .unwrap_or_else(|e| panic!("{}: RunPodSandbox: {e}", self.name));
        let run = start.elapsed();
        let start = Instant::now();
        self.cri.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
        self.cri
            .remove_pod_sandbox(&pod.id)
            .expect("RemovePodSandbox");
        if record {
            self.run.push(run);
            self.teardown.push(start.elapsed());
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(xs: &[Duration]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn quantile(xs: &[Duration], q: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The Hodges–Lehmann estimate of how much later `b` is than `a`.
fn hodges_lehmann(a: &[Duration], b: &[Duration]) -> f64 {
    let mut diffs: Vec<f64> = b
        .iter()
        .flat_map(|&y| a.iter().map(move |&x| ms(y) - ms(x)))
        .collect();
    diffs.sort_by(f64::total_cmp);
    diffs[diffs.len() / 2]
}

/// A 95% bootstrap interval for median(b) - median(a), with a fixed-seed generator so the same
/// samples always give the same interval.
fn bootstrap_diff(a: &[Duration], b: &[Duration]) -> (f64, f64) {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut diffs: Vec<f64> = (0..2000)
        .map(|_| {
            let ra: Vec<Duration> = (0..a.len()).map(|_| a[next(a.len())]).collect();
            let rb: Vec<Duration> = (0..b.len()).map(|_| b[next(b.len())]).collect();
            median(&rb) - median(&ra)
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    (diffs[50], diffs[1949])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pods: usize = std::env::var("SHUNT_SANDBOX_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!("RunPodSandbox with and without shunt in the chain: {pods} pods per arm, interleaved");
    let mut plain = Arm::new("bridge+portmap", Chain::Plain);
    let mut shunt = Arm::new("bridge+portmap+shunt", Chain::Shunt);
    // The shunt arm's pods really are captured: checked on one pod, outside the timed loop.
    {
        let pod = shunt
            .ctd
            .run_pod(&mut shunt.cri, "probe", "default", ANNOTATIONS)
            .expect("probe pod");
        assert!(
            !pod.shunt_rules().is_empty(),
            "the shunt arm's pod has no rules"
        );
        shunt.cri.stop_pod_sandbox(&pod.id).expect("stop");
        shunt.cri.remove_pod_sandbox(&pod.id).expect("remove");
    }
    for i in 0..5 {
        plain.pod(i, false);
        shunt.pod(i, false);
    }
    for i in 0..pods {
        if i % 2 == 0 {
            plain.pod(i, true);
            shunt.pod(i, true);
        } else {
            shunt.pod(i, true);
            plain.pod(i, true);
        }
    }
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>16}",
        "", "p10 ms", "p50 ms", "p90 ms", "stop+remove p50"
    );
    for arm in [&plain, &shunt] {
        println!(
            "{:<24} {:>9.2} {:>9.2} {:>9.2} {:>16.2}",
            arm.name,
            quantile(&arm.run, 0.1),
            median(&arm.run),
            quantile(&arm.run, 0.9),
            median(&arm.teardown)
        );
    }
    let added = median(&shunt.run) - median(&plain.run);
    let (lo, hi) = bootstrap_diff(&plain.run, &shunt.run);
    println!(
        "shunt adds {added:.2} ms to RunPodSandbox p50 (95% interval {lo:.2} .. {hi:.2} ms; target <= 8 ms)"
    );
    println!(
        "Hodges-Lehmann shift: {:.2} ms",
        hodges_lehmann(&plain.run, &shunt.run)
    );
    let torn = median(&shunt.teardown) - median(&plain.teardown);
    println!("shunt adds {torn:.2} ms to Stop+Remove p50 (two DELs)");
}
