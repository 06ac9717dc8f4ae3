//! The Istio and Linkerd profiles, DNS capture and TPROXY, with real traffic: a pod netns wired
//! to a peer netns, shunt run as the runtime runs it with the annotations those meshes' injectors
//! write, and connections (TCP and UDP) made as the app's and the proxy's UIDs.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use nix::sys::socket::{
    bind, connect as nix_connect, listen, setsockopt, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, SockaddrStorage,
};
use serde_json::{json, Value};
use shunt::netns::Netns;

const ISTIO_STATUS: &str =
    r#"{"initContainers":["istio-validation"],"containers":["istio-proxy"],"revision":"default"}"#;
const LINKERD_UID: u32 = 2102;

fn pod_conf(pair: &Pair, annotations: &Value, extra: Value) -> Value {
    conf(
        "1.0.0",
        Some(prev_result("1.0.0", &pair.pod.path, &[POD_V4, POD_V6])),
        Some(annotations.clone()),
        extra,
    )
}

/// ADD, then CHECK, as CRI-O does; both must succeed.
fn add(pair: &Pair, annotations: Value, extra: Value) -> Value {
    let c = pod_conf(pair, &annotations, extra);
    let path = pair.pod.path.to_string_lossy().into_owned();
    shunt("ADD", &path, &c).ok();
    let check = shunt("CHECK", &path, &c);
    assert_eq!(check.stdout, "", "CHECK prints nothing on success");
    check.ok();
    c
}

fn del(pair: &Pair) {
    let path = pair.pod.path.to_string_lossy().into_owned();
    shunt("DEL", &path, &conf("1.0.0", None, None, json!({}))).ok();
    assert_eq!(pair.pod.shunt_rules(), Vec::<String>::new());
    assert!(
        !pair.pod.exec(&["ip", "rule", "show"]).contains("proto 83")
            && !pair
                .pod
                .exec(&["ip", "-6", "rule", "show"])
                .contains("proto 83"),
        "DEL leaves no policy rule"
    );
}

fn family_of(addr: &SocketAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Connects from `src` (an address of `ns`), as `uid`: how Istio's inbound passthrough and a
/// client in a skipped subnet look on the wire.
fn connect_from(ns: &Netns, uid: u32, src: SocketAddr, dst: SocketAddr) -> TcpStream {
    as_user(ns, uid, uid, || {
        let fd =
            socket(family_of(&dst), SockType::Stream, SockFlag::empty(), None).expect("socket");
        bind(fd.as_raw_fd(), &SockaddrStorage::from(src)).expect("bind source");
        nix_connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))
            .unwrap_or_else(|e| panic!("connect {src} → {dst}: {e}"));
        TcpStream::from(fd)
    })
}

/// A listener with IP_TRANSPARENT, as a TPROXY proxy must have: it accepts connections for
/// addresses that are not its own.
fn transparent_listener(ns: &Netns, uid: u32, addr: SocketAddr) -> TcpListener {
    as_user(ns, uid, uid, || {
        let fd =
            socket(family_of(&addr), SockType::Stream, SockFlag::empty(), None).expect("socket");
        setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
        if addr.is_ipv4() {
            setsockopt(&fd, sockopt::IpTransparent, &true).expect("IP_TRANSPARENT");
        } else {
            set_ipv6_transparent(&fd);
        }
        bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).expect("bind");
        listen(&fd, Backlog::new(16).expect("backlog")).expect("listen");
        let l = TcpListener::from(fd);
        l.set_nonblocking(true).expect("nonblocking");
        l
    })
}

fn set_ipv6_transparent(fd: &std::os::fd::OwnedFd) {
    let on: nix::libc::c_int = 1;
    // IPV6_TRANSPARENT (75); nix has no typed option for it.
    // SAFETY: a valid socket, and a pointer to an int that outlives the call.
    let rc = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            nix::libc::SOL_IPV6,
            75,
            (&on as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IPV6_TRANSPARENT");
}

fn accept_within(l: &TcpListener, what: &str) -> TcpStream {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match l.accept() {
            Ok((s, _)) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nothing arrived at {what}"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn udp(ns: &Netns, uid: u32, addr: &str) -> UdpSocket {
    let s = as_user(ns, uid, uid, || UdpSocket::bind(addr)).expect("bind udp");
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    s
}

fn recv(s: &UdpSocket) -> Option<(String, SocketAddr)> {
    let mut buf = [0u8; 512];
    let (n, from) = s.recv_from(&mut buf).ok()?;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

#[test]
fn istio_validation_passthrough_and_never_captured_ports() {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    // Istio's validation binds exactly these: the capture ports on 127.0.0.1.
    let out_l = Listener::bind(&pod, PROXY_UID, "127.0.0.1:15001", "validator :15001");
    let in_l = Listener::bind(&pod, PROXY_UID, "127.0.0.1:15006", "validator :15006");
    let app = Listener::bind(&pod, APP_UID, "0.0.0.0:8080", "app :8080");
    let status = Listener::bind(&pod, PROXY_UID, "0.0.0.0:15021", "agent health :15021");
    let peer_http = Listener::bind(&peer, 0, "0.0.0.0:8080", "peer :8080");
    add(
        &pair,
        json!({"sidecar.istio.io/status": ISTIO_STATUS, "unrelated/annotation": "x"}),
        json!({}),
    );

    let c = connect(&pod, PROXY_UID, PROXY_UID, sock("127.0.0.6", 15002));
    lands(
        "validation: proxy → 127.0.0.6:15002",
        c,
        &in_l,
        Some(sock("127.0.0.6", 15002)),
    );
    assert!(
        !out_l.pending(),
        "validation connection must not reach :15001"
    );

    let c = connect_from(&pod, PROXY_UID, sock("127.0.0.6", 0), sock(POD_V4, 8080));
    lands("passthrough: proxy from 127.0.0.6 → app", c, &app, None);

    let c = connect(&pod, PROXY_UID, PROXY_UID, sock(POD_V4, 8080));
    lands(
        "proxy → own pod without passthrough source is inbound",
        c,
        &in_l,
        Some(sock(POD_V4, 8080)),
    );

    let c = connect(&peer, 0, 0, sock(POD_V4, 15021));
    lands("peer → :15021 is never captured", c, &status, None);

    let c = connect(&pod, APP_UID, APP_UID, sock(PEER_V4, 8080));
    lands("app → peer", c, &out_l, Some(sock(PEER_V4, 8080)));
    let c = connect(&pod, PROXY_UID, PROXY_UID, sock(PEER_V4, 8080));
    lands("proxy → peer goes direct", c, &peer_http, None);

    del(&pair);
}

#[test]
fn istio_traffic_annotations_both_families() {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    let proxy_out = Listener::bind(&pod, PROXY_UID, "[::]:15001", "proxy outbound");
    let proxy_in = Listener::bind(&pod, PROXY_UID, "[::]:15006", "proxy inbound");
    let app_9000 = Listener::bind(&pod, APP_UID, "[::]:9000", "app :9000");
    let app_8080 = Listener::bind(&pod, APP_UID, "[::]:8080", "app :8080");
    let peer_http = Listener::bind(&peer, 0, "[::]:8080", "peer :8080");
    let peer_db = Listener::bind(&peer, 0, "[::]:5432", "peer :5432");
    let peer_cache = Listener::bind(&peer, 0, "[::]:6379", "peer :6379");
    add(
        &pair,
        json!({
            "sidecar.istio.io/status": ISTIO_STATUS,
            "traffic.sidecar.istio.io/includeOutboundIPRanges": format!("{PEER_V4}/32,{PEER_V6}/128"),
            "traffic.sidecar.istio.io/excludeOutboundPorts": "6379",
            "traffic.sidecar.istio.io/includeOutboundPorts": "5432",
            "traffic.sidecar.istio.io/includeInboundPorts": "8080,9000",
            "traffic.sidecar.istio.io/excludeInboundPorts": "9000",
        }),
        json!({}),
    );
    for (pod_ip, peer_ip, peer2) in [(POD_V4, PEER_V4, PEER2_V4), (POD_V6, PEER_V6, PEER2_V6)] {
        let c = connect(&pod, APP_UID, APP_UID, sock(peer_ip, 8080));
        lands(
            "app → included range",
            c,
            &proxy_out,
            Some(sock(peer_ip, 8080)),
        );
        let c = connect(&pod, APP_UID, APP_UID, sock(peer2, 8080));
        lands("app → outside the included ranges", c, &peer_http, None);
        let c = connect(&pod, APP_UID, APP_UID, sock(peer2, 5432));
        lands(
            "app → included port, whatever the address",
            c,
            &proxy_out,
            Some(sock(peer2, 5432)),
        );
        let c = connect(&pod, APP_UID, APP_UID, sock(peer_ip, 6379));
        lands("app → excluded port", c, &peer_cache, None);
        let c = connect(&peer, 0, 0, sock(pod_ip, 8080));
        lands(
            "peer → included inbound port",
            c,
            &proxy_in,
            Some(sock(pod_ip, 8080)),
        );
        let c = connect(&peer, 0, 0, sock(pod_ip, 9000));
        lands("peer → excluded inbound port", c, &app_9000, None);
    }
    assert!(!peer_db.pending() && !app_8080.pending());
    del(&pair);
}

#[test]
fn linkerd_skip_ports_and_subnets() {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    let proxy_out = Listener::bind(&pod, LINKERD_UID, "[::]:4140", "linkerd outbound :4140");
    let proxy_in = Listener::bind(&pod, LINKERD_UID, "[::]:4143", "linkerd inbound :4143");
    let app = Listener::bind(&pod, APP_UID, "[::]:8080", "app :8080");
    let app_db = Listener::bind(&pod, APP_UID, "[::]:3306", "app :3306");
    let admin = Listener::bind(&pod, LINKERD_UID, "[::]:4191", "linkerd admin :4191");
    let peer_http = Listener::bind(&peer, 0, "[::]:8080", "peer :8080");
    let peer_smtp = Listener::bind(&peer, 0, "[::]:25", "peer :25");
    let peer_range = Listener::bind(&peer, 0, "[::]:8005", "peer :8005");
    add(
        &pair,
        json!({
            "linkerd.io/proxy-version": "edge-25.4.4",
            "config.linkerd.io/skip-inbound-ports": "3306",
            "config.linkerd.io/skip-outbound-ports": "25,8000-8010",
            "config.linkerd.io/skip-subnets": format!("{PEER2_V4}/32,{PEER2_V6}/128"),
        }),
        json!({}),
    );
    for (pod_ip, peer_ip, peer2) in [(POD_V4, PEER_V4, PEER2_V4), (POD_V6, PEER_V6, PEER2_V6)] {
        let c = connect(&pod, APP_UID, APP_UID, sock(peer_ip, 8080));
        lands("app → peer", c, &proxy_out, Some(sock(peer_ip, 8080)));
        let c = connect(&pod, APP_UID, APP_UID, sock(peer_ip, 25));
        lands("app → skipped outbound port", c, &peer_smtp, None);
        let c = connect(&pod, APP_UID, APP_UID, sock(peer_ip, 8005));
        lands("app → skipped outbound range", c, &peer_range, None);
        let c = connect(&pod, LINKERD_UID, LINKERD_UID, sock(peer_ip, 8080));
        lands("proxy → peer goes direct", c, &peer_http, None);
        let c = connect_from(&peer, 0, sock(peer_ip, 0), sock(pod_ip, 8080));
        lands("peer → pod", c, &proxy_in, Some(sock(pod_ip, 8080)));
        let c = connect_from(&peer, 0, sock(peer2, 0), sock(pod_ip, 8080));
        lands("skipped subnet → pod goes direct", c, &app, None);
        let c = connect(&peer, 0, 0, sock(pod_ip, 3306));
        lands("peer → skipped inbound port", c, &app_db, None);
        let c = connect(&peer, 0, 0, sock(pod_ip, 4191));
        lands("peer → admin port is never captured", c, &admin, None);
    }
    del(&pair);
}

#[test]
fn dns_capture_udp_and_tcp() {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    // Like istio-agent: on localhost, so its answers leave from the address the app's query
    // was redirected to, which is what lets conntrack undo the NAT on the way back.
    let dns_v4 = udp(&pod, PROXY_UID, "127.0.0.1:15053");
    let dns_v6 = udp(&pod, PROXY_UID, "[::1]:15053");
    let dns_tcp = Listener::bind(&pod, PROXY_UID, "[::]:15053", "proxy DNS (TCP) :15053");
    let upstream = udp(&peer, 0, "[::]:53");
    let upstream_tcp = Listener::bind(&peer, 0, "[::]:53", "peer DNS (TCP) :53");
    add(
        &pair,
        json!({
            "sidecar.istio.io/status": ISTIO_STATUS,
            "proxy.istio.io/config": "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n",
        }),
        json!({}),
    );
    for (any_ip, peer_ip, dns_udp) in [
        ("0.0.0.0:0", PEER_V4, &dns_v4),
        ("[::]:0", PEER_V6, &dns_v6),
    ] {
        let server = sock(peer_ip, 53);
        let app = udp(&pod, APP_UID, any_ip);
        as_user(&pod, APP_UID, APP_UID, || app.send_to(b"app query", server)).expect("send");
        let (msg, from) = recv(dns_udp).expect("the app's query reaches the DNS listener");
        assert_eq!(msg, "app query");
        dns_udp.send_to(b"answer", from).expect("reply");
        let (answer, answered_by) = recv(&app).expect("the app gets the answer");
        assert_eq!(
            (answer.as_str(), answered_by),
            ("answer", server),
            "the answer appears to come from the server the app asked"
        );

        let proxy = udp(&pod, PROXY_UID, any_ip);
        as_user(&pod, PROXY_UID, PROXY_UID, || {
            proxy.send_to(b"proxy query", server)
        })
        .expect("send");
        let (msg, _) = recv(&upstream).expect("the proxy's query reaches the real server");
        assert_eq!(msg, "proxy query");
        dns_udp.set_nonblocking(true).expect("nonblocking");
        assert!(
            recv(dns_udp).is_none(),
            "the proxy's query must not loop back"
        );
        dns_udp.set_nonblocking(false).expect("blocking");

        let c = connect(&pod, APP_UID, APP_UID, server);
        lands("app → DNS over TCP", c, &dns_tcp, Some(server));
        let c = connect(&pod, PROXY_UID, PROXY_UID, server);
        lands("proxy → DNS over TCP goes direct", c, &upstream_tcp, None);
    }
    del(&pair);
}

#[test]
fn dns_is_not_captured_unless_asked() {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    let upstream = udp(&peer, 0, "0.0.0.0:53");
    add(
        &pair,
        json!({"sidecar.istio.io/status": ISTIO_STATUS}),
        json!({}),
    );
    let app = udp(&pod, APP_UID, "0.0.0.0:0");
    as_user(&pod, APP_UID, APP_UID, || {
        app.send_to(b"q", sock(PEER_V4, 53))
    })
    .expect("send");
    assert_eq!(recv(&upstream).expect("reaches the server").0, "q");
    del(&pair);
}

#[test]
fn tproxy_keeps_source_and_destination() {
    let pair = Pair::new();
    let pod = pair.pod.handle();
    let peer = pair.peer.handle();
    let proxy_in = transparent_listener(&pod, PROXY_UID, "[::]:15006".parse().unwrap());
    let proxy_out = Listener::bind(&pod, PROXY_UID, "[::]:15001", "proxy outbound");
    let app = Listener::bind(&pod, APP_UID, "[::]:15021", "agent :15021");
    let c = add(
        &pair,
        json!({
            "sidecar.istio.io/status": ISTIO_STATUS,
            "sidecar.istio.io/interceptionMode": "TPROXY",
        }),
        json!({}),
    );
    for table in ["", "-6"] {
        let mut args = vec!["ip"];
        if !table.is_empty() {
            args.push(table);
        }
        let rules = pair.pod.exec(&[&args[..], &["rule", "show"]].concat());
        assert!(
            rules.contains("fwmark 0x539 lookup 133 proto 83"),
            "{table} rules: {rules}"
        );
        let routes = pair
            .pod
            .exec(&[&args[..], &["route", "show", "table", "133"]].concat());
        assert!(routes.contains("local default dev lo"), "{routes}");
    }
    for (pod_ip, peer_ip) in [(POD_V4, PEER_V4), (POD_V6, PEER_V6)] {
        let mut client = connect_from(&peer, 0, sock(peer_ip, 0), sock(pod_ip, 8080));
        let mut accepted = accept_within(&proxy_in, "transparent listener :15006");
        let local = accepted.local_addr().expect("local");
        let remote = accepted.peer_addr().expect("peer");
        let canon = |a: SocketAddr| match a {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => a,
            },
            _ => a,
        };
        assert_eq!(
            canon(local),
            sock(pod_ip, 8080),
            "original destination kept"
        );
        assert_eq!(
            canon(remote).ip(),
            peer_ip.parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(canon(remote).port(), client.local_addr().unwrap().port());
        client.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        accepted
            .read_exact(&mut buf)
            .expect("read on the proxy side");
        accepted.write_all(b"pong").expect("reply");
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        client.read_exact(&mut buf).expect("the reply gets back");
        assert_eq!(&buf, b"pong");

        let c = connect(&peer, 0, 0, sock(pod_ip, 15021));
        lands("never-captured port under TPROXY", c, &app, None);
        let c = connect(&pod, APP_UID, APP_UID, sock(peer_ip, 8080));
        lands(
            "outbound stays REDIRECT",
            c,
            &proxy_out,
            Some(sock(peer_ip, 8080)),
        );
    }

    // The proxy hands a connection to the app keeping the client's address as source, as
    // Envoy's original_src does: transparent socket, TPROXY mark. The app's replies go to an
    // address that is not the pod's; only the restored mark and the policy route bring them
    // back over lo to the proxy instead of out of eth0.
    for (pod_ip, peer_ip) in [(POD_V4, PEER_V4), (POD_V6, PEER_V6)] {
        let app = Listener::bind(&pod, APP_UID, &any(pod_ip, 9080), "app :9080");
        let mut upstream = as_user(&pod, PROXY_UID, PROXY_UID, || {
            let dst = sock(pod_ip, 9080);
            let fd =
                socket(family_of(&dst), SockType::Stream, SockFlag::empty(), None).expect("socket");
            if dst.is_ipv4() {
                setsockopt(&fd, sockopt::IpTransparent, &true).expect("IP_TRANSPARENT");
            } else {
                set_ipv6_transparent(&fd);
            }
            setsockopt(&fd, sockopt::Mark, &0x539).expect("SO_MARK");
            bind(fd.as_raw_fd(), &SockaddrStorage::from(sock(peer_ip, 40000))).expect("bind");
            nix_connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))
                .unwrap_or_else(|e| panic!("original-source connect to {dst}: {e}"));
            TcpStream::from(fd)
        });
        let mut at_app = lands(
            "proxy → app with the client's source",
            upstream.try_clone().unwrap(),
            &app,
            None,
        );
        assert_eq!(
            at_app.peer_addr().unwrap().ip(),
            peer_ip.parse::<std::net::IpAddr>().unwrap()
        );
        at_app.write_all(b"hi").expect("app writes");
        upstream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut buf = [0u8; 2];
        upstream
            .read_exact(&mut buf)
            .expect("the app's reply is routed back to the proxy");
        assert_eq!(&buf, b"hi");
    }

    // CHECK notices when the policy routing is gone.
    pair.pod.exec(&[
        "ip", "route", "del", "local", "default", "dev", "lo", "table", "133",
    ]);
    let path = pair.pod.path.to_string_lossy().into_owned();
    let msg = shunt("CHECK", &path, &c).error(102);
    assert!(msg.contains("route") && msg.contains("table 133"), "{msg}");
    del(&pair);
}

#[test]
fn bad_istio_annotation_fails_the_pod_and_leaves_nothing() {
    let pair = Pair::new();
    let path = pair.pod.path.to_string_lossy().into_owned();
    for (k, v) in [
        ("traffic.sidecar.istio.io/excludeInboundPorts", "http"),
        ("sidecar.istio.io/interceptionMode", "tproxy"),
    ] {
        let c = pod_conf(
            &pair,
            &json!({"sidecar.istio.io/status": ISTIO_STATUS, k: v}),
            json!({}),
        );
        let msg = shunt("ADD", &path, &c).error(7);
        assert!(msg.contains(k) && msg.contains(v), "{msg}");
        assert_eq!(pair.pod.shunt_rules(), Vec::<String>::new());
    }
    assert!(!pair.pod.exec(&["ip", "rule", "show"]).contains("proto 83"));
}

#[test]
fn plan_and_inspect_commands() {
    let pair = Pair::new();
    let path = pair.pod.path.to_string_lossy().into_owned();
    let istio = [
        "-a",
        "sidecar.istio.io/status={}",
        "-a",
        "sidecar.istio.io/interceptionMode=TPROXY",
    ];

    let plan = run_program(&shunt_bin(), &[&["plan"], &istio[..]].concat(), &[], b"");
    plan.ok();
    assert!(plan.stdout.contains("# profile: istio"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("-j TPROXY --on-port 15006"),
        "{}",
        plan.stdout
    );

    let empty = run_program(&shunt_bin(), &["inspect", &path], &[], b"");
    empty.ok();
    assert!(empty.stdout.contains("owns nothing"), "{}", empty.stdout);

    add(
        &pair,
        json!({"sidecar.istio.io/status": "{}", "sidecar.istio.io/interceptionMode": "TPROXY"}),
        json!({}),
    );
    let inspect = run_program(
        &shunt_bin(),
        &[&["inspect", &path], &istio[..]].concat(),
        &[],
        b"",
    );
    inspect.ok();
    assert!(
        inspect.stdout.contains("# in sync with the plan"),
        "{}",
        inspect.stdout
    );
    assert!(
        inspect.stdout.contains("fwmark 0x539 lookup 133"),
        "{}",
        inspect.stdout
    );
    assert!(
        inspect.stdout.contains("-A SHUNT_TPROXY"),
        "{}",
        inspect.stdout
    );

    // Asked about a plain REDIRECT pod, the same netns differs: exit status 3 and a list.
    let other = run_program(
        &shunt_bin(),
        &["inspect", &path, "-a", "sidecar.istio.io/status={}"],
        &[],
        b"",
    );
    assert_eq!(other.code, 3, "{}\n{}", other.stdout, other.stderr);
    assert!(
        other.stdout.contains("# differences from the plan"),
        "{}",
        other.stdout
    );
    assert!(
        other.stdout.contains("unexpected ip -4 rule"),
        "{}",
        other.stdout
    );

    let bad = run_program(
        &shunt_bin(),
        &["plan", "-a", "shunt.dev/redirect=maybe"],
        &[],
        b"",
    );
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("shunt.dev/redirect"), "{}", bad.stderr);
    assert_eq!(bad.stdout, "", "errors go to stderr");
    del(&pair);
}
