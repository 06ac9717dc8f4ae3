//! Golden tests of the planner: annotation sets in, `iptables-restore` text out, compared with
//! the files under tests/golden/. Run with SHUNT_BLESS=1 to rewrite them after a deliberate
//! change, and review the diff: these files are what shunt writes into every pod.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use shunt::cni::PodRef;
use shunt::plan::{plan, render_create};
use shunt::settings::{decide, Decision, Defaults};

fn golden(name: &str, annotations: &[(&str, &str)], pod_ips: &[&str]) {
    let mut map: BTreeMap<String, String> =
        BTreeMap::from([("shunt.dev/redirect".to_string(), "enabled".to_string())]);
    for (k, v) in annotations {
        map.insert(k.to_string(), v.to_string());
    }
    let pod = PodRef {
        namespace: Some("shop".into()),
        name: Some("web".into()),
        uid: None,
    };
    let Ok(Decision::Redirect(settings)) = decide(&pod, Some(&map), &[], &Defaults::default())
    else {
        panic!("{name}: annotations did not ask for redirection");
    };
    let ips: Vec<IpAddr> = pod_ips.iter().map(|s| s.parse().unwrap()).collect();
    let p = plan(&settings, &ips);

    let mut text = String::new();
    text.push_str("# annotations:\n");
    for (k, v) in &map {
        text.push_str(&format!("#   {k}: {v:?}\n"));
    }
    text.push_str(&format!("# pod addresses: {}\n", pod_ips.join(", ")));
    for fp in &p.families {
        text.push_str(&format!(
            "\n# {} ({} rules)\n",
            fp.family.name(),
            fp.tables[0].rules.len()
        ));
        text.push_str(&render_create(fp));
    }

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.rules"));
    if std::env::var_os("SHUNT_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with SHUNT_BLESS=1 to create)", path.display()));
    assert!(
        text == want,
        "{name}: plan differs from {}\n--- want\n{want}\n--- got\n{text}",
        path.display()
    );
}

#[test]
fn defaults_ipv4() {
    golden("defaults-ipv4", &[], &["10.244.1.7"]);
}

#[test]
fn defaults_dual_stack() {
    golden(
        "defaults-dual-stack",
        &[],
        &["10.244.1.7", "fd00:10:244:1::7"],
    );
}

#[test]
fn exclusions_dual_stack() {
    golden(
        "exclusions-dual-stack",
        &[
            (
                "shunt.dev/exclude-outbound-cidrs",
                "169.254.169.254/32, 10.96.0.0/12, fd00:10:96::/112",
            ),
            ("shunt.dev/exclude-outbound-ports", "5432, 6379"),
            ("shunt.dev/exclude-inbound-ports", "22,9090"),
            ("shunt.dev/proxy-uid", "2102"),
            ("shunt.dev/proxy-gid", "2103"),
            ("shunt.dev/outbound-port", "4140"),
            ("shunt.dev/inbound-port", "4143"),
        ],
        &["10.244.1.7", "fd00:10:244:1::7"],
    );
}

#[test]
fn include_lists_dual_stack() {
    golden(
        "include-lists-dual-stack",
        &[
            (
                "shunt.dev/include-outbound-cidrs",
                "10.0.0.0/8,192.168.0.0/16",
            ),
            ("shunt.dev/include-inbound-ports", "80, 443"),
            ("shunt.dev/exclude-inbound-ports", "443"),
        ],
        &["10.244.1.7", "fd00:10:244:1::7"],
    );
}

#[test]
fn no_inbound_capture() {
    golden(
        "no-inbound-ipv4",
        &[("shunt.dev/include-inbound-ports", "")],
        &["10.244.1.7"],
    );
}

#[test]
fn host_bits_are_cleared() {
    golden(
        "host-bits-ipv4",
        &[("shunt.dev/exclude-outbound-cidrs", "10.1.2.3/8, 192.0.2.1")],
        &["10.244.1.7", "10.244.2.7"],
    );
}
