//! End to end under a real runtime: containerd (Debian's, with runc and the reference CNI
//! plugins) creates pod sandboxes over CRI through a chain ending in shunt, and real TCP from
//! inside the sandbox's netns shows where the traffic goes. Needs root and containerd
//! (`bash tests/deps.sh` installs it).

mod common;

use std::io::{Read, Write};

use common::containerd::{Chain, Containerd, Pod};
use common::*;

const CAPTURED: &[(&str, &str)] = &[
    ("shunt.dev/redirect", "enabled"),
    ("shunt.dev/exclude-outbound-ports", "9090"),
];

fn sock_of(pod: &Pod, port: u16) -> std::net::SocketAddr {
    sock(&pod.ip, port)
}

#[test]
fn a_captured_pods_traffic_goes_through_its_proxy() {
    let ctd = Containerd::start("e2e", Chain::Shunt);
    let mut cri = ctd.client();
    let web = ctd
        .run_pod(&mut cri, "web", "default", CAPTURED)
        .expect("RunPodSandbox web");
    let backend = ctd
        .run_pod(&mut cri, "backend", "default", &[])
        .expect("RunPodSandbox backend");
    assert!(
        !web.shunt_rules().is_empty(),
        "no rules in the captured pod"
    );
    assert!(
        backend.shunt_rules().is_empty(),
        "rules in the pod without the annotation: {:?}",
        backend.shunt_rules()
    );

    let (w, b) = (web.handle(), backend.handle());
    let outbound = Listener::bind(&w, PROXY_UID, "0.0.0.0:15001", "proxy outbound");
    let inbound = Listener::bind(&w, PROXY_UID, "0.0.0.0:15006", "proxy inbound");
    let server = Listener::bind(&b, 0, "0.0.0.0:8080", "backend :8080");
    let metrics = Listener::bind(&b, 0, "0.0.0.0:9090", "backend :9090");

    // The app's connection to the backend lands on the proxy, which learns where it was going.
    let mut app = connect(&w, APP_UID, APP_UID, sock_of(&backend, 8080));
    let mut at_proxy = outbound
        .accept()
        .expect("the app's connection reached the proxy");
    assert_eq!(original_dst(&at_proxy), sock_of(&backend, 8080));
    app.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    at_proxy.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");
    assert!(!server.pending(), "the backend saw the captured connection");

    // The proxy's own connection, and the excluded port, go straight to the backend.
    let _upstream = connect(&w, PROXY_UID, PROXY_UID, sock_of(&backend, 8080));
    assert!(
        server.accept().is_some(),
        "the proxy's upstream was captured"
    );
    let _scrape = connect(&w, APP_UID, APP_UID, sock_of(&backend, 9090));
    assert!(metrics.accept().is_some(), "the excluded port was captured");
    assert!(!outbound.pending());

    // Inbound: the backend pod connecting to the web pod lands on the inbound listener.
    let _client = connect(&b, 0, 0, sock_of(&web, 8080));
    let at_inbound = inbound.accept().expect("inbound capture");
    assert_eq!(original_dst(&at_inbound), sock_of(&web, 8080));
}

#[test]
fn pods_that_did_not_ask_are_untouched() {
    let ctd = Containerd::start("e2e", Chain::Shunt);
    let mut cri = ctd.client();
    let plain = ctd.run_pod(&mut cri, "plain", "default", &[]).expect("run");
    let disabled = ctd
        .run_pod(
            &mut cri,
            "disabled",
            "default",
            &[("shunt.dev/redirect", "disabled")],
        )
        .expect("run");
    // kube-system is excluded by the shipped entry, even when the pod asks.
    let system = ctd
        .run_pod(&mut cri, "coredns", "kube-system", CAPTURED)
        .expect("run");
    for pod in [&plain, &disabled, &system] {
        assert_eq!(pod.shunt_rules(), Vec::<String>::new(), "pod {}", pod.id);
    }
}

#[test]
fn a_malformed_annotation_fails_the_sandbox_and_leaves_nothing() {
    let ctd = Containerd::start("e2e", Chain::Shunt);
    let mut cri = ctd.client();
    let err = match ctd.run_pod(
        &mut cri,
        "typo",
        "default",
        &[
            ("shunt.dev/redirect", "enabled"),
            ("shunt.dev/exclude-outbound-ports", "80,http"),
        ],
    ) {
        Ok(pod) => panic!("RunPodSandbox succeeded: {}", pod.id),
        Err(e) => e.message(),
    };
    eprintln!("RunPodSandbox failed as it should: {err}");
    assert!(
        err.contains("shunt.dev/exclude-outbound-ports") && err.contains("http"),
        "containerd's error does not carry shunt's message: {err}"
    );
    let left = cri.list_pod_sandbox(false).expect("list");
    assert!(left.is_empty(), "sandboxes left behind: {left:?}");
    // The runtime tore the whole chain down: the bridge plugin's address went back to the pool.
    assert_eq!(ctd.allocated_ips(), Vec::<String>::new());
}

#[test]
fn stop_and_remove_succeed_and_repeat() {
    let ctd = Containerd::start("e2e", Chain::Shunt);
    let mut cri = ctd.client();
    let pod = ctd
        .run_pod(&mut cri, "web", "default", CAPTURED)
        .expect("run");
    assert!(!pod.shunt_rules().is_empty());
    assert_eq!(ctd.allocated_ips(), vec![pod.ip.clone()]);
    // Stop: DEL with the netns and the cached result. Again: the runtime may repeat it.
    cri.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    cri.stop_pod_sandbox(&pod.id).expect("StopPodSandbox again");
    assert!(
        !pod.netns.exists(),
        "the netns {} outlived the stop",
        pod.netns.display()
    );
    assert_eq!(ctd.allocated_ips(), Vec::<String>::new());
    // Remove: DEL once more, now with no netns and no prevResult.
    cri.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    cri.remove_pod_sandbox(&pod.id)
        .expect("RemovePodSandbox again");
    assert!(cri.list_pod_sandbox(false).expect("list").is_empty());
}

#[test]
fn eight_pods_created_at_once_all_get_rules() {
    let ctd = Containerd::start("e2e", Chain::Shunt);
    let pods: Vec<Pod> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let ctd = &ctd;
                s.spawn(move || {
                    let mut cri = ctd.client();
                    ctd.run_pod(&mut cri, &format!("burst-{i}"), "default", CAPTURED)
                        .expect("RunPodSandbox")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let expected = pods[0].shunt_rules().len();
    assert!(expected > 0);
    for pod in &pods {
        assert_eq!(pod.shunt_rules().len(), expected, "pod {}", pod.id);
    }
}

#[test]
fn teardown_works_across_a_containerd_restart() {
    let mut ctd = Containerd::start("e2e", Chain::Shunt);
    let pod = {
        let mut cri = ctd.client();
        ctd.run_pod(&mut cri, "web", "default", CAPTURED)
            .expect("run")
    };
    assert!(!pod.shunt_rules().is_empty());
    ctd.restart();
    let mut cri = ctd.client();
    let listed = cri.list_pod_sandbox(true).expect("list");
    assert_eq!(listed.len(), 1, "the sandbox survives the restart");
    cri.stop_pod_sandbox(&pod.id)
        .expect("StopPodSandbox after restart");
    cri.remove_pod_sandbox(&pod.id)
        .expect("RemovePodSandbox after restart");
    assert!(!pod.netns.exists());
    assert!(cri.list_pod_sandbox(false).expect("list").is_empty());
}

#[test]
fn containers_without_any_capability_are_redirected() {
    let ctd = Containerd::start("e2e", Chain::Shunt);
    let mut cri = ctd.client();
    let backend = ctd
        .run_pod(&mut cri, "backend", "default", &[])
        .expect("run");
    let server = ctd.start_container(
        &mut cri,
        &backend,
        "server",
        1000,
        &["serve", "8080", "backend"],
    );
    let web = ctd
        .run_pod(&mut cri, "web", "default", CAPTURED)
        .expect("run");
    let proxy = ctd.start_container(
        &mut cri,
        &web,
        "proxy",
        i64::from(PROXY_UID),
        &["serve", "15001", "proxy"],
    );
    proxy.wait_for("listening").expect("the proxy started");
    let app = ctd.start_container(
        &mut cri,
        &web,
        "app",
        i64::from(APP_UID),
        &["connect", &backend.ip, "8080"],
    );
    let said = app.wait_for("reply").expect("the app connected");
    assert!(said.contains("CapEff 0000000000000000"), "{said}");
    assert!(
        said.contains("hello from proxy"),
        "the app did not reach the proxy: {said}"
    );
    let seen = proxy
        .wait_for("accepted")
        .expect("the proxy saw the connection");
    assert!(
        seen.contains(&format!(
            "original destination {}:8080 (redirected here)",
            backend.ip
        )),
        "{seen}"
    );
    assert!(server.lines().iter().all(|l| !l.contains("accepted")));
}

/// Polls for up to `secs`.
fn eventually(secs: u64, f: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    f()
}

#[test]
fn pods_that_started_before_shunt_get_their_rules_from_the_installer() {
    let ctd = Containerd::start("e2e", Chain::Plain);
    let original_conflist = ctd.conflist();
    let mut cri = ctd.client();
    let early = ctd
        .run_pod(&mut cri, "early", "default", CAPTURED)
        .expect("run");
    let plain = ctd.run_pod(&mut cri, "plain", "default", &[]).expect("run");
    assert!(
        early.shunt_rules().is_empty(),
        "shunt is not in the chain yet"
    );

    let log_path = ctd.dir.join("logs/installer.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut installer = ctd
        .installer_command(&["--repair", "program"])
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("start shunt-install");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let repaired = eventually(15, || !early.shunt_rules().is_empty());
    assert!(
        repaired,
        "the early pod never got its rules:\n{}",
        read_log()
    );
    assert!(
        plain.shunt_rules().is_empty(),
        "a pod that did not ask got rules"
    );
    assert!(eventually(5, || read_log().contains("checked 2 running pods")));
    let log_text = read_log();
    assert!(
        log_text.contains("early") && log_text.contains("programmed them now"),
        "{log_text}"
    );
    // The plugin's own line for that ADD reached the installer's stdout through the socket.
    assert!(
        log_text
            .lines()
            .any(|l| l.contains("\"source\":\"plugin\"") && l.contains("captured")),
        "{log_text}"
    );

    // The repaired pod's traffic really goes to its proxy.
    let (e, p) = (early.handle(), plain.handle());
    let proxy = Listener::bind(&e, PROXY_UID, "0.0.0.0:15001", "proxy");
    let _server = Listener::bind(&p, 0, "0.0.0.0:8080", "server");
    let _app = connect(&e, APP_UID, APP_UID, sock_of(&plain, 8080));
    let at_proxy = proxy.accept().expect("redirected");
    assert_eq!(original_dst(&at_proxy), sock_of(&plain, 8080));

    // Pods created from now on get their rules through the chain.
    let late = ctd
        .run_pod(&mut cri, "late", "default", CAPTURED)
        .expect("run");
    assert!(!late.shunt_rules().is_empty());

    // SIGTERM: the conflist as it was and no binary; later pods are not captured.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(installer.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(installer.wait().expect("wait").success());
    assert_eq!(ctd.conflist(), original_conflist);
    assert!(!ctd.dir.join("bin/shunt").exists());
    // Teardown of a captured pod still works once shunt is gone from the chain.
    cri.stop_pod_sandbox(&late.id).expect("stop");
    cri.remove_pod_sandbox(&late.id).expect("remove");
}

#[test]
fn report_only_repair_counts_and_warns_but_does_not_touch() {
    let ctd = Containerd::start("e2e", Chain::Plain);
    let mut cri = ctd.client();
    let early = ctd
        .run_pod(&mut cri, "early", "default", CAPTURED)
        .expect("run");
    let port = 20000 + (std::process::id() % 20000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let out = ctd
        .installer_command(&["--repair", "report", "--health-addr", &addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let pid = nix::unistd::Pid::from_raw(out.id() as i32);
    let metrics = || {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    };
    let counted = eventually(15, || {
        metrics().is_some_and(|m| m.contains("shunt_install_repair_missing_total 1"))
    });
    let ready = metrics().unwrap_or_default();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let output = out.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(counted, "{ready}\n{text}");
    assert!(ready.contains("shunt_install_ready 1"), "{ready}");
    assert!(
        ready.contains("shunt_install_repair_programmed_total 0"),
        "{ready}"
    );
    assert!(
        early.shunt_rules().is_empty(),
        "report-only touched the pod"
    );
    assert!(text.contains("report-only"), "{text}");
}
