//! Real TCP through real rules: a pod netns wired by veth to a peer netns, shunt run as the
//! runtime would run it, and connections made as the app's and the proxy's UIDs. Where a
//! connection lands, and what SO_ORIGINAL_DST says, is the proof.

mod common;

use common::*;
use serde_json::{json, Value};

struct Family {
    pod: &'static str,
    peer: &'static str,
    peer2: &'static str,
    loopback: &'static str,
    host_prefix: u8,
}

const V4: Family = Family {
    pod: POD_V4,
    peer: PEER_V4,
    peer2: PEER2_V4,
    loopback: "127.0.0.1",
    host_prefix: 32,
};
const V6: Family = Family {
    pod: POD_V6,
    peer: PEER_V6,
    peer2: PEER2_V6,
    loopback: "::1",
    host_prefix: 128,
};

fn add(pair: &Pair, annotations: Value, extra: Value) {
    let c = conf(
        "1.0.0",
        Some(prev_result("1.0.0", &pair.pod.path, &[POD_V4, POD_V6])),
        Some(annotations),
        extra,
    );
    let out = shunt("ADD", &pair.pod.path.to_string_lossy(), &c);
    out.ok();
    let check = shunt("CHECK", &pair.pod.path.to_string_lossy(), &c);
    assert_eq!(check.stdout, "", "CHECK prints nothing on success");
    check.ok();
}

/// The whole matrix for one family and one iptables backend.
fn matrix(f: &Family, backend: &str) {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    let proxy_out = Listener::bind(&pod, PROXY_UID, &any(f.pod, 15001), "proxy outbound :15001");
    let proxy_in = Listener::bind(&pod, PROXY_UID, &any(f.pod, 15006), "proxy inbound :15006");
    let app = Listener::bind(&pod, APP_UID, &any(f.pod, 8080), "app :8080");
    let app_ssh = Listener::bind(&pod, APP_UID, &any(f.pod, 8022), "app :8022");
    let peer_http = Listener::bind(&peer, 0, &any(f.peer, 8080), "peer :8080");
    let peer_metrics = Listener::bind(&peer, 0, &any(f.peer, 9090), "peer :9090");

    add(
        &pair,
        json!({
            "shunt.dev/redirect": "enabled",
            "shunt.dev/exclude-outbound-ports": "9090",
            "shunt.dev/exclude-outbound-cidrs": format!("{}/{}", f.peer2, f.host_prefix),
            "shunt.dev/exclude-inbound-ports": "8022",
            "unrelated.example.com/annotation": "kept out of the rules"
        }),
        json!({"iptablesBackend": backend}),
    );

    let c = connect(&pod, APP_UID, APP_UID, sock(f.peer, 8080));
    lands("app → peer", c, &proxy_out, Some(sock(f.peer, 8080)));

    let c = connect(&pod, PROXY_UID, PROXY_UID, sock(f.peer, 8080));
    lands("proxy uid → peer", c, &peer_http, None);

    let c = connect(&pod, APP_UID, PROXY_UID, sock(f.peer, 8080));
    lands("proxy gid → peer", c, &peer_http, None);

    let c = connect(&pod, APP_UID, APP_UID, sock(f.peer, 9090));
    lands("app → excluded port", c, &peer_metrics, None);

    let c = connect(&pod, APP_UID, APP_UID, sock(f.peer2, 8080));
    lands("app → excluded CIDR", c, &peer_http, None);

    let c = connect(&pod, APP_UID, APP_UID, sock(f.loopback, 8080));
    lands("app → loopback", c, &app, None);

    let c = connect(&pod, APP_UID, APP_UID, sock(f.pod, 8080));
    lands("app → own pod IP", c, &app, None);

    let c = connect(&pod, PROXY_UID, PROXY_UID, sock(f.pod, 8080));
    lands(
        "proxy → own pod IP is inbound",
        c,
        &proxy_in,
        Some(sock(f.pod, 8080)),
    );

    let c = connect(&peer, 0, 0, sock(f.pod, 8080));
    lands("peer → pod", c, &proxy_in, Some(sock(f.pod, 8080)));

    let c = connect(&peer, 0, 0, sock(f.pod, 8022));
    lands("peer → excluded inbound port", c, &app_ssh, None);

    assert!(!proxy_out.pending() && !proxy_in.pending() && !app.pending());

    let del = shunt(
        "DEL",
        &pair.pod.path.to_string_lossy(),
        &conf("1.0.0", None, None, json!({})),
    );
    del.ok();
    assert_eq!(pair.pod.shunt_rules(), Vec::<String>::new());
    let c = connect(&pod, APP_UID, APP_UID, sock(f.peer, 8080));
    lands("after DEL, app → peer directly", c, &peer_http, None);
}

#[test]
fn ipv4_nft() {
    matrix(&V4, "nft");
}

#[test]
fn ipv6_nft() {
    matrix(&V6, "nft");
}

#[test]
fn ipv4_legacy() {
    matrix(&V4, "legacy");
}

#[test]
fn ipv6_legacy() {
    matrix(&V6, "legacy");
}

#[test]
fn include_lists_narrow_capture() {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    let proxy_out = Listener::bind(&pod, PROXY_UID, "[::]:15001", "proxy outbound");
    let proxy_in = Listener::bind(&pod, PROXY_UID, "[::]:15006", "proxy inbound");
    let app = Listener::bind(&pod, APP_UID, "[::]:8081", "app :8081");
    let peer_http = Listener::bind(&peer, 0, "[::]:8080", "peer :8080");
    add(
        &pair,
        json!({
            "shunt.dev/redirect": "enabled",
            "shunt.dev/include-outbound-cidrs": format!("{PEER_V4}/32, {PEER_V6}/128"),
            "shunt.dev/include-inbound-ports": "8080",
        }),
        json!({}),
    );
    for (peer_ip, other_ip) in [(PEER_V4, PEER2_V4), (PEER_V6, PEER2_V6)] {
        let c = connect(&pod, APP_UID, APP_UID, sock(peer_ip, 8080));
        lands(
            "app → included CIDR",
            c,
            &proxy_out,
            Some(sock(peer_ip, 8080)),
        );
        let c = connect(&pod, APP_UID, APP_UID, sock(other_ip, 8080));
        lands("app → not included", c, &peer_http, None);
    }
    for pod_ip in [POD_V4, POD_V6] {
        let c = connect(&peer, 0, 0, sock(pod_ip, 8080));
        lands(
            "peer → included port",
            c,
            &proxy_in,
            Some(sock(pod_ip, 8080)),
        );
        let c = connect(&peer, 0, 0, sock(pod_ip, 8081));
        lands("peer → port not included", c, &app, None);
    }
}

#[test]
fn empty_inbound_list_captures_no_inbound() {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    let app = Listener::bind(&pod, APP_UID, "0.0.0.0:8080", "app :8080");
    let proxy_out = Listener::bind(&pod, PROXY_UID, "0.0.0.0:15001", "proxy outbound");
    let _peer_http = Listener::bind(&peer, 0, "0.0.0.0:8080", "peer :8080");
    add(
        &pair,
        json!({"shunt.dev/redirect": "enabled", "shunt.dev/include-inbound-ports": ""}),
        json!({}),
    );
    let c = connect(&peer, 0, 0, sock(POD_V4, 8080));
    lands("peer → pod, no inbound capture", c, &app, None);
    let c = connect(&pod, APP_UID, APP_UID, sock(PEER_V4, 8080));
    lands(
        "outbound still captured",
        c,
        &proxy_out,
        Some(sock(PEER_V4, 8080)),
    );
}

#[test]
fn custom_ports_and_uid() {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    let proxy_out = Listener::bind(&pod, 2102, "0.0.0.0:4140", "proxy outbound :4140");
    let peer_http = Listener::bind(&peer, 0, "0.0.0.0:8080", "peer :8080");
    add(
        &pair,
        json!({
            "shunt.dev/redirect": "enabled",
            "shunt.dev/outbound-port": "4140",
            "shunt.dev/inbound-port": "4143",
            "shunt.dev/proxy-uid": "2102",
        }),
        json!({}),
    );
    let c = connect(&pod, PROXY_UID, PROXY_UID, sock(PEER_V4, 8080));
    lands(
        "uid 1337 is an app here",
        c,
        &proxy_out,
        Some(sock(PEER_V4, 8080)),
    );
    let c = connect(&pod, 2102, 2102, sock(PEER_V4, 8080));
    lands("the configured proxy uid", c, &peer_http, None);
}

#[test]
fn pods_that_do_not_ask_are_untouched() {
    for (annotations, extra) in [
        (json!(null), json!({})),
        (json!({}), json!({})),
        (json!({"shunt.dev/redirect": "disabled"}), json!({})),
        (
            json!({"shunt.dev/redirect": "enabled"}),
            json!({"excludeNamespaces": ["shop"]}),
        ),
    ] {
        let pair = Pair::new();
        let pod = pair.pod.handle();
        let peer = pair.peer.handle();
        let peer_http = Listener::bind(&peer, 0, "0.0.0.0:8080", "peer :8080");
        add(&pair, annotations.clone(), extra);
        assert_eq!(
            pair.pod.shunt_rules(),
            Vec::<String>::new(),
            "{annotations}"
        );
        let c = connect(&pod, APP_UID, APP_UID, sock(PEER_V4, 8080));
        lands("uncaptured app → peer", c, &peer_http, None);
    }
}

#[test]
fn addresses_come_from_the_netns_when_prev_result_has_none() {
    let pair = Pair::new();
    let mut prev = prev_result("1.0.0", &pair.pod.path, &[]);
    prev["ips"] = json!([]);
    let c = conf(
        "1.0.0",
        Some(prev),
        Some(json!({"shunt.dev/redirect": "enabled"})),
        json!({}),
    );
    shunt("ADD", &pair.pod.path.to_string_lossy(), &c).ok();
    let v4 = pair.pod.exec(&["iptables-save", "-t", "nat"]);
    let v6 = pair.pod.exec(&["ip6tables-save", "-t", "nat"]);
    assert!(v4.contains(&format!("-d {POD_V4}/32 -o lo")), "{v4}");
    assert!(v6.contains(&format!("-d {POD_V6}/128 -o lo")), "{v6}");
}

/// Legacy iptables serialises on /run/xtables.lock across the whole host. shunt points its
/// tools at a per-netns lock, so a process sitting on the host lock cannot stall pod start-up.
#[test]
fn host_xtables_lock_does_not_block_add() {
    use nix::fcntl::{Flock, FlockArg};
    let pair = Pair::new();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/xtables.lock")
        .expect("open host lock");
    let held = Flock::lock(lock, FlockArg::LockExclusive).expect("take host lock");
    let started = std::time::Instant::now();
    add(
        &pair,
        json!({"shunt.dev/redirect": "enabled"}),
        json!({"iptablesBackend": "legacy"}),
    );
    drop(held);
    // The tools wait up to 10 s for a lock they share; finishing well inside that shows they
    // never asked for the host's.
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    assert!(!pair.pod.exec(&["iptables-legacy-save"]).is_empty());
}
