//! The built binary over the CNI protocol, for every cniVersion it supports: what it prints,
//! what it exits with, and what it leaves in a real netns.

mod common;

use common::*;
use serde_json::{json, Value};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn captured() -> Value {
    json!({"shunt.dev/redirect": "enabled", "shunt.dev/exclude-inbound-ports": "22"})
}

fn rule_lines(ns: &Ns) -> usize {
    ns.shunt_rules()
        .iter()
        .filter(|l| l.contains(": -A "))
        .count()
}

#[test]
fn add_echoes_prev_result_at_every_version() {
    for v in VERSIONS {
        let ns = Ns::new("proto");
        let netns = ns.path.to_string_lossy().into_owned();
        for annotations in [captured(), json!(null), json!({})] {
            let prev = prev_result(v, &ns.path, &[POD_V4, POD_V6]);
            let out = shunt(
                "ADD",
                &netns,
                &conf(v, Some(prev.clone()), Some(annotations), json!({})),
            );
            out.ok();
            assert_eq!(out.json(), prev, "cniVersion {v}");
            assert!(!out.stdout.contains('\n'), "one JSON document on stdout");
        }
    }
}

#[test]
fn add_twice_leaves_one_copy() {
    let ns = Ns::new("proto");
    let netns = ns.path.to_string_lossy().into_owned();
    let c = conf(
        "1.0.0",
        Some(prev_result("1.0.0", &ns.path, &[POD_V4, POD_V6])),
        Some(captured()),
        json!({}),
    );
    shunt("ADD", &netns, &c).ok();
    let once = ns.shunt_rules();
    shunt("ADD", &netns, &c).ok();
    assert_eq!(ns.shunt_rules(), once);
    // v4 and v6: 4 chains each, plus their rules.
    assert!(rule_lines(&ns) >= 2 * 12, "{once:#?}");
}

#[test]
fn check_passes_after_add_and_names_what_is_missing() {
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let ns = Ns::new("check");
        let netns = ns.path.to_string_lossy().into_owned();
        let c = conf(
            v,
            Some(prev_result(v, &ns.path, &[POD_V4, POD_V6])),
            Some(captured()),
            json!({}),
        );
        shunt("ADD", &netns, &c).ok();
        let out = shunt("CHECK", &netns, &c);
        out.ok();
        assert_eq!(out.stdout, "");

        ns.exec(&["ip6tables", "-t", "nat", "-F", "SHUNT_OUT_REDIRECT"]);
        let msg = shunt("CHECK", &netns, &c).error(102);
        assert!(
            msg.contains("IPv6")
                && msg.contains("-A SHUNT_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
            "{msg}"
        );

        // ADD repairs it, and CHECK agrees again.
        shunt("ADD", &netns, &c).ok();
        shunt("CHECK", &netns, &c).ok();
        ns.exec(&[
            "iptables",
            "-t",
            "nat",
            "-D",
            "OUTPUT",
            "-p",
            "tcp",
            "-j",
            "SHUNT_OUTPUT",
        ]);
        let msg = shunt("CHECK", &netns, &c).error(102);
        assert!(
            msg.contains("missing in nat: -A OUTPUT -p tcp -j SHUNT_OUTPUT"),
            "{msg}"
        );
    }
}

#[test]
fn check_of_a_pod_that_did_not_ask_is_trivially_fine() {
    let ns = Ns::new("check");
    let c = conf(
        "1.0.0",
        Some(prev_result("1.0.0", &ns.path, &[POD_V4])),
        Some(json!(null)),
        json!({}),
    );
    shunt("CHECK", &ns.path.to_string_lossy(), &c).ok();
}

#[test]
fn check_is_not_in_0_3() {
    let ns = Ns::new("check");
    for v in ["0.3.0", "0.3.1"] {
        let c = conf(
            v,
            Some(prev_result(v, &ns.path, &[POD_V4])),
            Some(captured()),
            json!({}),
        );
        let msg = shunt("CHECK", &ns.path.to_string_lossy(), &c).error(1);
        assert!(msg.contains("CHECK"), "{msg}");
    }
}

#[test]
fn del_is_idempotent_and_needs_neither_netns_nor_prev_result() {
    for v in VERSIONS {
        let ns = Ns::new("del");
        let netns = ns.path.to_string_lossy().into_owned();
        let prev = prev_result(v, &ns.path, &[POD_V4, POD_V6]);
        shunt(
            "ADD",
            &netns,
            &conf(v, Some(prev.clone()), Some(captured()), json!({})),
        )
        .ok();
        assert!(rule_lines(&ns) > 0);

        // As containerd does it: StopPodSandbox with the cached result...
        let out = shunt(
            "DEL",
            &netns,
            &conf(v, Some(prev), Some(captured()), json!({})),
        );
        out.ok();
        assert_eq!(out.stdout, "");
        assert_eq!(ns.shunt_rules(), Vec::<String>::new());
        // ...then again, and then RemovePodSandbox with no netns and no prevResult.
        shunt("DEL", &netns, &conf(v, None, Some(captured()), json!({}))).ok();
        shunt("DEL", "", &conf(v, None, None, json!({}))).ok();
        let gone = format!("/run/netns/shunt-gone-{}", std::process::id());
        shunt("DEL", &gone, &conf(v, None, None, json!({}))).ok();
    }
}

#[test]
fn del_after_the_netns_was_unmounted() {
    let ns = Ns::new("del");
    let netns = ns.path.to_string_lossy().into_owned();
    let c = conf("1.0.0", None, None, json!({}));
    drop(ns);
    shunt("DEL", &netns, &c).ok();
    // The runtime may leave an empty file where the bind mount was.
    std::fs::write(&netns, b"").unwrap();
    shunt("DEL", &netns, &c).ok();
    std::fs::remove_file(&netns).unwrap();
}

#[test]
fn version_lists_everything_and_answers_in_the_asked_version() {
    for v in VERSIONS {
        let env = vec![("CNI_COMMAND".to_string(), "VERSION".to_string())];
        let out = run_shunt(&env, json!({"cniVersion": v}).to_string().as_bytes());
        out.ok();
        assert_eq!(
            out.json(),
            json!({"cniVersion": v, "supportedVersions": VERSIONS})
        );
    }
    let env = vec![("CNI_COMMAND".to_string(), "VERSION".to_string())];
    assert_eq!(run_shunt(&env, b"").ok().json()["cniVersion"], "1.1.0");
}

#[test]
fn status_and_gc_exist_from_1_1_0() {
    let c = json!({"cniVersion": "1.1.0", "name": "k8s", "type": "shunt"});
    for cmd in ["STATUS", "GC"] {
        let env = vec![("CNI_COMMAND".to_string(), cmd.to_string())];
        let out = run_shunt(&env, c.to_string().as_bytes());
        out.ok();
        assert_eq!(out.stdout, "");
        let old = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "shunt"});
        run_shunt(&env, old.to_string().as_bytes()).error(1);
    }
}

/// Runs shunt in a private mount namespace where /usr/sbin holds only what `setup` puts there
/// (a shell fragment run with $REAL naming a copy of the real xtables binaries).
fn run_with_sbin(setup: &str, env: &[(String, String)], stdin: &Value) -> Run {
    let script = format!(
        "set -e; REAL=$(mktemp -d); cp /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi $REAL/; \
         mount -t tmpfs shunt-test /usr/sbin; {setup}; exec \"$0\""
    );
    run_program(
        "unshare",
        &["-m", "sh", "-c", &script, &shunt_bin()],
        env,
        stdin.to_string().as_bytes(),
    )
}

#[test]
fn status_reports_missing_tools_and_add_refuses() {
    let c = json!({"cniVersion": "1.1.0", "name": "k8s", "type": "shunt"});
    let env = vec![("CNI_COMMAND".to_string(), "STATUS".to_string())];
    let msg = run_with_sbin("true", &env, &c).error(50);
    assert!(msg.contains("iptables"), "{msg}");

    let ns = Ns::new("tools");
    let netns = ns.path.to_string_lossy().into_owned();
    let add = conf(
        "1.1.0",
        Some(prev_result("1.1.0", &ns.path, &[POD_V4])),
        Some(captured()),
        json!({}),
    );
    let msg = run_with_sbin("true", &cni_env("ADD", &netns), &add).error(100);
    assert!(msg.contains("iptables"), "{msg}");
    assert_eq!(ns.shunt_rules(), Vec::<String>::new());
}

/// IPv4 applies, IPv6 fails: the IPv4 rules must be rolled back and ADD must fail.
#[test]
fn a_failing_family_rolls_back_the_other() {
    let ns = Ns::new("rollback");
    let netns = ns.path.to_string_lossy().into_owned();
    let add = conf(
        "1.0.0",
        Some(prev_result("1.0.0", &ns.path, &[POD_V4, POD_V6])),
        Some(captured()),
        json!({"iptablesBackend": "nft"}),
    );
    let setup = "for t in iptables-nft-restore iptables-nft-save ip6tables-nft-save; do \
                 ln -s $REAL/xtables-nft-multi /usr/sbin/$t; done; \
                 printf '#!/bin/sh\\necho refusing >&2\\nexit 1\\n' > /usr/sbin/ip6tables-nft-restore; \
                 chmod +x /usr/sbin/ip6tables-nft-restore";
    let msg = run_with_sbin(setup, &cni_env("ADD", &netns), &add).error(101);
    assert!(msg.contains("IPv6") && msg.contains("refusing"), "{msg}");
    assert_eq!(ns.shunt_rules(), Vec::<String>::new());
}

#[test]
fn stdout_carries_only_the_reply() {
    let ns = Ns::new("stdout");
    let netns = ns.path.to_string_lossy().into_owned();
    let c = conf(
        "1.0.0",
        Some(prev_result("1.0.0", &ns.path, &[POD_V4])),
        Some(captured()),
        json!({"logLevel": "trace"}),
    );
    let out = shunt("ADD", &netns, &c);
    out.ok();
    out.json();
    assert!(
        out.stderr.contains("captured"),
        "the log line goes to stderr: {}",
        out.stderr
    );
}

/// The example conflist in conf/ is what README tells people to use: its shunt entry must work.
#[test]
fn the_shipped_conflist_entry_works() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/10-bridge-shunt.conflist");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let entry = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "shunt")
        .expect("a shunt entry")
        .clone();
    assert_eq!(
        entry["capabilities"]["io.kubernetes.cri.pod-annotations"],
        true
    );
    let ns = Ns::new("conf");
    // What the runtime builds from the list: the entry, plus version, name and runtime data.
    let mut c = entry;
    c["cniVersion"] = list["cniVersion"].clone();
    c["name"] = list["name"].clone();
    c["prevResult"] = prev_result("1.0.0", &ns.path, &[POD_V4]);
    c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": captured()});
    shunt("ADD", &ns.path.to_string_lossy(), &c).ok();
    let rules = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(
        rules.contains("-A SHUNT_OUTPUT -d 169.254.169.254/32 -j RETURN"),
        "{rules}"
    );
}
