//! The demo: shunt doing its job in real network namespaces, narrated step by step.
//! Run as root: `bash tests/demo.sh` (or `cargo run --release --example demo`).

#[path = "../common/mod.rs"]
mod common;

use std::io::{Read, Write};

use common::*;
use serde_json::json;

fn step(text: &str) {
    println!("\n==> {text}");
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the demo creates network namespaces: run it as root");
        std::process::exit(1);
    }
    step("A pod netns and a peer netns, joined by a veth pair (192.0.2.10 ↔ 192.0.2.20)");
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    println!("    pod netns:  {}", pair.pod.path.display());

    step("The runtime calls shunt (CNI ADD) after the primary plugin, with the pod's annotations");
    let conf = conf(
        "1.0.0",
        Some(prev_result("1.0.0", &pair.pod.path, &[POD_V4, POD_V6])),
        Some(json!({
            "shunt.dev/redirect": "enabled",
            "shunt.dev/exclude-outbound-ports": "9090"
        })),
        json!({}),
    );
    println!(
        "    annotations: {}",
        conf["runtimeConfig"]["io.kubernetes.cri.pod-annotations"]
    );
    let add = shunt("ADD", &pair.pod.path.to_string_lossy(), &conf);
    if add.code != 0 {
        eprintln!("ADD failed: {}\n{}", add.stdout, add.stderr);
        std::process::exit(1);
    }
    print!("    shunt logged: {}", add.stderr);
    println!(
        "    shunt printed the primary plugin's result back: {} bytes of JSON",
        add.stdout.len()
    );

    step("What shunt wrote into the pod netns (iptables-save -t nat)");
    for line in pair.pod.exec(&["iptables-save", "-t", "nat"]).lines() {
        if line.contains("SHUNT") {
            println!("    {line}");
        }
    }

    step("A sidecar proxy listens on :15001 as UID 1337; a server listens on the peer at :8080");
    let proxy = Listener::bind(&pod, PROXY_UID, "0.0.0.0:15001", "proxy :15001");
    let server = Listener::bind(&peer, 0, "0.0.0.0:8080", "server :8080");

    step("The app (UID 1000, no capabilities) connects to 192.0.2.20:8080");
    let mut app = connect(&pod, APP_UID, APP_UID, sock(PEER_V4, 8080));
    let Some(mut at_proxy) = proxy.accept() else {
        eprintln!("FAILED: the app's connection did not reach the proxy");
        std::process::exit(1);
    };
    let orig = original_dst(&at_proxy);
    println!("    the proxy accepted it; SO_ORIGINAL_DST = {orig}");
    app.write_all(b"GET / HTTP/1.0\r\n\r\n").ok();
    let mut buf = [0u8; 64];
    let n = at_proxy.read(&mut buf).unwrap_or(0);
    println!(
        "    the proxy read: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    println!("    the server saw nothing: {}", !server.pending());

    step("The proxy (UID 1337) connects to the original destination itself: not captured");
    let _upstream = connect(&pod, PROXY_UID, PROXY_UID, orig);
    match server.accept() {
        Some(_) => println!("    the server accepted the proxy's connection directly"),
        None => {
            eprintln!("FAILED: the proxy's own connection did not reach the server");
            std::process::exit(1);
        }
    }

    step("The runtime tears the pod down (CNI DEL)");
    let del = shunt("DEL", &pair.pod.path.to_string_lossy(), &conf);
    print!("    shunt logged: {}", del.stderr);
    println!(
        "    SHUNT rules left in the pod netns: {}",
        pair.pod.shunt_rules().len()
    );
    println!(
        "\nDone: the app's traffic went through the proxy, and no container needed NET_ADMIN."
    );
}
