//! The demo: a real containerd creates pods through a CNI chain ending in shunt, and a pod whose
//! containers hold no capability at all gets its traffic redirected to its proxy.
//! Run as root: `sudo bash tests/demo.sh` (installs what it needs, builds, runs this).

#[path = "../common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use common::containerd::{Chain, Container, Containerd};
use common::{APP_UID, PROXY_UID};

fn step(text: &str) {
    println!("\n==> {text}");
}

fn fail(text: &str) -> ! {
    eprintln!("\nDEMO FAILED: {text}");
    std::process::exit(1);
}

fn show(who: &str, container: &Container, needle: &str) -> String {
    match container.wait_for(needle) {
        Some(line) => {
            println!("    {who} printed: {line}");
            line
        }
        None => fail(&format!(
            "{who} printed no line with {needle:?}; it printed {:?}",
            container.lines()
        )),
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        fail("the demo starts containerd and creates network namespaces: run it as root");
    }
    step("Starting a private containerd (its own state, socket and CNI config in a temp dir)");
    let ctd = Containerd::start("demo", Chain::Shunt);
    let mut cri = ctd.client();
    let version = cri.version().unwrap_or_else(|e| fail(&e.to_string()));
    println!(
        "    {} {} serving CRI {} on {}",
        version.runtime_name,
        version.runtime_version,
        version.runtime_api_version,
        ctd.socket.display()
    );
    println!("    CNI chain: bridge (+ host-local) -> portmap, and shunt-install spliced in:");
    let conflist: serde_json::Value =
        serde_json::from_str(&ctd.conflist()).unwrap_or(serde_json::Value::Null);
    if let Some(entry) = conflist["plugins"].as_array().and_then(|p| p.last()) {
        println!("      {entry}");
    }

    step("Pod \"backend\" (no annotations) with a server container on :8080");
    let backend = ctd
        .run_pod(&mut cri, "backend", "default", &[])
        .unwrap_or_else(|e| fail(&e.to_string()));
    println!("    pod IP {}", backend.ip);
    let server = ctd.start_container(
        &mut cri,
        &backend,
        "server",
        1000,
        &["serve", "8080", "backend"],
    );
    show("server", &server, "listening");

    step("Pod \"web\" with the annotation shunt.dev/redirect: enabled");
    let started = Instant::now();
    let web = ctd
        .run_pod(
            &mut cri,
            "web",
            "default",
            &[("shunt.dev/redirect", "enabled")],
        )
        .unwrap_or_else(|e| fail(&e.to_string()));
    println!(
        "    RunPodSandbox returned in {:.0} ms: containerd ran bridge, portmap, then shunt",
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("    pod IP {}, netns {}", web.ip, web.netns.display());
    println!(
        "    what shunt wrote into the pod's netns (iptables-save -t nat, read from the host):"
    );
    let saved = Command::new("nsenter")
        .arg(format!("--net={}", web.netns.display()))
        .args(["iptables-save", "-t", "nat"])
        .output()
        .unwrap_or_else(|e| fail(&format!("nsenter: {e}")));
    let rules: Vec<String> = String::from_utf8_lossy(&saved.stdout)
        .lines()
        .filter(|l| l.contains("SHUNT"))
        .map(str::to_owned)
        .collect();
    if rules.is_empty() {
        fail("no SHUNT rules in the web pod's netns");
    }
    for rule in &rules {
        println!("      {rule}");
    }

    step("Its proxy container: UID 1337, every capability dropped, listening on :15001");
    let proxy = ctd.start_container(
        &mut cri,
        &web,
        "proxy",
        i64::from(PROXY_UID),
        &["serve", "15001", "proxy"],
    );
    show("proxy", &proxy, "listening");

    step(&format!(
        "Its app container: UID 1000, every capability dropped, connects to backend {}:8080",
        backend.ip
    ));
    let app = ctd.start_container(
        &mut cri,
        &web,
        "app",
        i64::from(APP_UID),
        &["connect", &backend.ip, "8080"],
    );
    let said = show("app", &app, "reply");
    let seen = show("proxy", &proxy, "accepted");
    if !said.contains("hello from proxy") || !seen.contains("redirected here") {
        fail("the app's connection did not land on the proxy");
    }
    let server_saw = server
        .lines()
        .into_iter()
        .filter(|l| l.contains("accepted"))
        .count();
    println!(
        "    the backend server saw {server_saw} connections: the proxy decides what to forward"
    );

    step("StopPodSandbox + RemovePodSandbox for both pods (shunt's DEL runs on each)");
    for (name, pod) in [("web", &web), ("backend", &backend)] {
        cri.stop_pod_sandbox(&pod.id)
            .unwrap_or_else(|e| fail(&e.to_string()));
        cri.remove_pod_sandbox(&pod.id)
            .unwrap_or_else(|e| fail(&e.to_string()));
        println!("    {name}: stopped and removed");
    }
    drop(ctd);
    println!(
        "\nDone: the app's connection went to its proxy, with the original destination intact,\n\
         and no container of the pod held NET_ADMIN or any other capability."
    );
}
