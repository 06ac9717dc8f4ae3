//! Helpers shared by the integration tests: real network namespaces wired with veth, the built
//! `shunt` binary driven over the CNI protocol, and sockets opened inside a netns as a given
//! UID/GID. Everything here needs root; nothing here fakes the kernel.
#![allow(dead_code)]

use std::io::{ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
use serde_json::{json, Value};
use shunt::netns::Netns;

pub mod containerd;

/// The built plugin: cargo names it for tests; the demo (an example) finds it one directory up,
/// where cargo puts the binaries of the same build.
pub fn shunt_bin() -> String {
    if let Some(p) = option_env!("CARGO_BIN_EXE_shunt") {
        return p.to_owned();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("shunt").to_string_lossy().into_owned()
}
pub const POD_V4: &str = "192.0.2.10";
pub const PEER_V4: &str = "192.0.2.20";
/// A second peer address, for CIDR exclusions.
pub const PEER2_V4: &str = "192.0.2.21";
pub const POD_V6: &str = "2001:db8::10";
pub const PEER_V6: &str = "2001:db8::20";
pub const PEER2_V6: &str = "2001:db8::21";
pub const PROXY_UID: u32 = 1337;
pub const APP_UID: u32 = 1000;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces and must run as root (see README.md)"
    );
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every backend and family a rule could be in.
pub const SAVE_TOOLS: [&str; 4] = [
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
];

/// A named netns under /run/netns, deleted on drop.
pub struct Ns {
    pub name: String,
    pub path: PathBuf,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Ns {
    pub fn new(tag: &str) -> Ns {
        require_root();
        let name = format!(
            "shunt-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        let path = PathBuf::from(format!("/run/netns/{name}"));
        Ns { name, path }
    }

    pub fn handle(&self) -> Netns {
        Netns::open(&self.path).expect("open netns")
    }

    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all);
    }

    /// Runs a command inside the netns; returns stdout.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every rule line of every backend and family that mentions SHUNT.
    pub fn shunt_rules(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for tool in SAVE_TOOLS {
            lines.extend(
                self.exec(&[tool])
                    .lines()
                    .filter(|l| l.contains("SHUNT"))
                    .map(|l| format!("{tool}: {l}")),
            );
        }
        lines
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A pod netns and a peer netns joined by veth, dual-stack, with documentation addresses.
pub struct Pair {
    pub pod: Ns,
    pub peer: Ns,
}

impl Pair {
    pub fn new() -> Pair {
        let pod = Ns::new("pod");
        let peer = Ns::new("peer");
        sh(
            "ip",
            &[
                "link", "add", "eth0", "netns", &pod.name, "type", "veth", "peer", "eth0", "netns",
                &peer.name,
            ],
        );
        for (ns, addrs) in [
            (&pod, vec![format!("{POD_V4}/24"), format!("{POD_V6}/64")]),
            (
                &peer,
                vec![
                    format!("{PEER_V4}/24"),
                    format!("{PEER2_V4}/24"),
                    format!("{PEER_V6}/64"),
                    format!("{PEER2_V6}/64"),
                ],
            ),
        ] {
            for a in addrs {
                let mut args = vec!["addr", "add", a.as_str(), "dev", "eth0"];
                if a.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args);
            }
            ns.ip(&["link", "set", "eth0", "up"]);
        }
        Pair { pod, peer }
    }
}

/// A prevResult as the bridge plugin would produce it for the pod, in the given version's shape.
pub fn prev_result(version: &str, netns: &Path, ips: &[&str]) -> Value {
    let old = version.starts_with("0.");
    let ips: Vec<Value> = ips
        .iter()
        .map(|ip| {
            let v6 = ip.contains(':');
            let mut e = json!({
                "address": format!("{ip}/{}", if v6 { 64 } else { 24 }),
                "interface": 1
            });
            if old {
                e["version"] = json!(if v6 { "6" } else { "4" });
            }
            e
        })
        .collect();
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:f4:00:01"},
            {"name": "eth0", "mac": "0a:58:0a:f4:00:0a", "sandbox": netns.display().to_string()}
        ],
        "ips": ips,
        "dns": {}
    })
}

/// The network configuration the runtime pipes to shunt.
pub fn conf(version: &str, prev: Option<Value>, annotations: Option<Value>, extra: Value) -> Value {
    let mut c = json!({"cniVersion": version, "name": "k8s-pod-network", "type": "shunt"});
    if let Some(p) = prev {
        c["prevResult"] = p;
    }
    if let Some(a) = annotations {
        c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": a});
    }
    if let Value::Object(m) = extra {
        for (k, v) in m {
            c[k] = v;
        }
    }
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts a CNI error with this code, and returns its message.
    pub fn error(&self, code: u64) -> String {
        assert_ne!(
            self.code, 0,
            "expected failure, got success: {}",
            self.stdout
        );
        assert!(!self.stderr.contains("panicked"), "panic: {}", self.stderr);
        let v = self.json();
        assert_eq!(v["code"], json!(code), "{v}\nstderr: {}", self.stderr);
        assert!(v["cniVersion"].is_string(), "{v}");
        v["msg"].as_str().expect("msg").to_owned()
    }

    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "stdout {}\nstderr {}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn cni_env(command: &str, netns: &str) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "K8S_POD_UID=1234;IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs a program with exactly `env` (plus PATH) and `stdin`.
pub fn run_program(program: &str, args: &[&str], env: &[(String, String)], stdin: &[u8]) -> Run {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin);
    drop(input);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

pub fn run_shunt(env: &[(String, String)], stdin: &[u8]) -> Run {
    run_program(&shunt_bin(), &[], env, stdin)
}

pub fn shunt(command: &str, netns: &str, conf: &Value) -> Run {
    run_shunt(&cni_env(command, netns), conf.to_string().as_bytes())
}

/// Runs `f` inside `ns` on a thread whose file-system UID/GID are set, so sockets it creates
/// belong to that user: the owner match looks at exactly these credentials.
pub fn as_user<T: Send>(ns: &Netns, uid: u32, gid: u32, f: impl FnOnce() -> T + Send) -> T {
    // A thread of its own, so the test thread's credentials stay as they were.
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.run(|| {
                setfsgid(Gid::from_raw(gid));
                setfsuid(Uid::from_raw(uid));
                f()
            })
            .expect("enter netns")
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A listening socket in a netns, polled without blocking the test forever.
pub struct Listener {
    pub what: String,
    sock: TcpListener,
}

impl Listener {
    pub fn bind(ns: &Netns, uid: u32, addr: &str, what: &str) -> Listener {
        let addr: SocketAddr = addr.parse().expect("addr");
        let sock = as_user(ns, uid, uid, || TcpListener::bind(addr)).expect("bind");
        sock.set_nonblocking(true).expect("nonblocking");
        Listener {
            what: what.to_owned(),
            sock,
        }
    }

    /// Accepts one connection within a few seconds.
    pub fn accept(&self) -> Option<TcpStream> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.sock.accept() {
                Ok((s, _)) => return Some(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(_) => return None,
            }
        }
    }

    /// Whether a connection is waiting right now.
    pub fn pending(&self) -> bool {
        self.sock.accept().is_ok()
    }
}

/// Connects from inside `ns` as `uid`/`gid`.
pub fn connect(ns: &Netns, uid: u32, gid: u32, to: SocketAddr) -> TcpStream {
    as_user(ns, uid, gid, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
    .unwrap_or_else(|e| panic!("connect to {to} as uid {uid} gid {gid}: {e}"))
}

/// Asserts that `conn` arrived at `on` (and, when given, with that SO_ORIGINAL_DST); returns the
/// accepted side.
pub fn lands(case: &str, conn: TcpStream, on: &Listener, orig: Option<SocketAddr>) -> TcpStream {
    let accepted = on
        .accept()
        .unwrap_or_else(|| panic!("{case}: nothing arrived at {}", on.what));
    if let Some(want) = orig {
        assert_eq!(original_dst(&accepted), want, "{case}: SO_ORIGINAL_DST");
    }
    drop(conn);
    accepted
}

/// The destination the connection had before REDIRECT rewrote it.
pub fn original_dst(s: &TcpStream) -> SocketAddr {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = s.local_addr().expect("local addr");
    let mapped_v4 = matches!(local, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some());
    match local {
        SocketAddr::V4(_) => v4_original_dst(s),
        SocketAddr::V6(_) if mapped_v4 => v4_original_dst(s),
        SocketAddr::V6(_) => {
            let a = getsockopt(s, sockopt::Ip6tOriginalDst).expect("IP6T_SO_ORIGINAL_DST");
            SocketAddr::new(IpAddr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port))
        }
    }
}

fn v4_original_dst(s: &TcpStream) -> SocketAddr {
    use nix::sys::socket::{getsockopt, sockopt};
    let a = getsockopt(s, sockopt::OriginalDst).expect("SO_ORIGINAL_DST");
    SocketAddr::new(
        IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()),
        u16::from_be(a.sin_port),
    )
}

pub fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// The wildcard address of the family of `ip`.
pub fn any(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[::]:{port}")
    } else {
        format!("0.0.0.0:{port}")
    }
}
