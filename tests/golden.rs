//! Golden tests of the planner: annotation sets in, `iptables-restore` text out, compared with
//! the files under tests/golden/ (shunt's own annotations) and tests/golden/profiles/ (Istio's
//! and Linkerd's, as `shunt plan` prints them). Run with SHUNT_BLESS=1 to rewrite them after a
//! deliberate change, and review the diff: these files are what shunt writes into every pod.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use shunt::cni::PodRef;
use shunt::config::PluginConfig;
use shunt::plan::{plan, render_create};
use shunt::profiles::decide;
use shunt::settings::Decision;

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
    let Ok(Decision::Redirect { settings, .. }) =
        decide(&pod, Some(&map), &PluginConfig::default())
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
            fp.rule_count()
        ));
        text.push_str(&render_create(fp));
    }

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.rules"));
    compare(name, &path, &text);
}

/// Compares `text` with the golden file, or rewrites the file under SHUNT_BLESS=1.
fn compare(name: &str, path: &std::path::Path, text: &str) {
    if std::env::var_os("SHUNT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path)
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

/// `shunt plan` output for an annotation set (and optionally a conflist entry), compared with
/// tests/golden/profiles/<name>.plan.
fn golden_plan(name: &str, annotations: &[(&str, &str)], config: Option<&str>, ips: &[&str]) {
    let mut args: Vec<String> = Vec::new();
    for (k, v) in annotations {
        args.push("-a".into());
        args.push(format!("{k}={v}"));
    }
    for ip in ips {
        args.push("--ip".into());
        args.push((*ip).into());
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/profiles");
    let conf_path =
        std::env::temp_dir().join(format!("shunt-golden-{name}-{}.json", std::process::id()));
    if let Some(c) = config {
        std::fs::write(&conf_path, c).unwrap();
        args.push("-c".into());
        args.push(conf_path.to_string_lossy().into_owned());
    }
    let out = shunt::cli::plan_command(&args);
    let _ = std::fs::remove_file(&conf_path);
    let mut text = format!(
        "# shunt plan{}\n",
        args.iter()
            .map(|a| {
                if a.starts_with('/') {
                    " -c <config below>".to_owned()
                } else if a == "-c" {
                    String::new()
                } else {
                    format!(" {a:?}")
                }
            })
            .collect::<String>()
    );
    if let Some(c) = config {
        text.push_str(&format!("# config: {c}\n"));
    }
    text.push_str(&out.unwrap_or_else(|e| panic!("{name}: {e}")));
    compare(name, &dir.join(format!("{name}.plan")), &text);
}

const ISTIO_STATUS: (&str, &str) = (
    "sidecar.istio.io/status",
    r#"{"initContainers":["istio-validation"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#,
);
const DUAL: [&str; 2] = ["10.244.1.7", "fd00:10:244:1::7"];

#[test]
fn istio_defaults() {
    golden_plan(
        "istio-defaults",
        &[ISTIO_STATUS, ("sidecar.istio.io/inject", "true")],
        None,
        &DUAL,
    );
}

#[test]
fn istio_traffic_annotations() {
    golden_plan(
        "istio-traffic",
        &[
            ISTIO_STATUS,
            ("sidecar.istio.io/interceptionMode", "REDIRECT"),
            (
                "traffic.sidecar.istio.io/includeOutboundIPRanges",
                "10.0.0.0/8,fd00::/8",
            ),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.96.0.1/32,fd00:10:96::1/128",
            ),
            ("traffic.sidecar.istio.io/includeInboundPorts", "8080,9090"),
            ("traffic.sidecar.istio.io/excludeInboundPorts", "9090,22"),
            ("traffic.sidecar.istio.io/includeOutboundPorts", "5432"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "3306,6379"),
            ("traffic.sidecar.istio.io/excludeInterfaces", "net1"),
        ],
        None,
        &DUAL,
    );
}

#[test]
fn istio_tproxy() {
    golden_plan(
        "istio-tproxy",
        &[
            ISTIO_STATUS,
            ("sidecar.istio.io/interceptionMode", "TPROXY"),
        ],
        None,
        &DUAL,
    );
}

#[test]
fn istio_dns_from_proxy_config() {
    golden_plan(
        "istio-dns",
        &[
            ISTIO_STATUS,
            (
                "proxy.istio.io/config",
                "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n",
            ),
        ],
        None,
        &["10.244.1.7"],
    );
}

#[test]
fn istio_node_config() {
    golden_plan(
        "istio-node-config",
        &[ISTIO_STATUS],
        Some(
            r#"{"type":"shunt","istio":{"proxyUid":1000670000,"proxyGid":1000670001,"dnsCapture":true}}"#,
        ),
        &["10.244.1.7"],
    );
}

#[test]
fn istio_not_captured() {
    golden_plan(
        "istio-init-container",
        &[(
            "sidecar.istio.io/status",
            r#"{"initContainers":["istio-init"],"containers":["istio-proxy"]}"#,
        )],
        None,
        &DUAL,
    );
}

#[test]
fn linkerd_defaults() {
    golden_plan(
        "linkerd-defaults",
        &[("linkerd.io/proxy-version", "edge-25.4.4")],
        None,
        &DUAL,
    );
}

#[test]
fn linkerd_annotations() {
    golden_plan(
        "linkerd-skips",
        &[
            ("linkerd.io/proxy-version", "edge-25.4.4"),
            ("config.linkerd.io/skip-inbound-ports", "3306,8000-8080"),
            ("config.linkerd.io/skip-outbound-ports", "25,587"),
            (
                "config.linkerd.io/skip-subnets",
                "10.10.0.0/16,fd00:10::/32",
            ),
            ("config.linkerd.io/proxy-uid", "2103"),
            ("config.linkerd.io/proxy-gid", "2104"),
        ],
        None,
        &DUAL,
    );
}

#[test]
fn linkerd_node_config() {
    golden_plan(
        "linkerd-node-config",
        &[("linkerd.io/proxy-version", "edge-25.4.4")],
        Some(
            r#"{"type":"shunt","linkerd":{"proxyGid":2102,"skipInboundPorts":"25","skipOutboundPorts":[4567,4568]}}"#,
        ),
        &["10.244.1.7"],
    );
}

#[test]
fn shunt_dns_and_tproxy() {
    golden_plan(
        "shunt-dns-tproxy",
        &[
            ("shunt.dev/redirect", "enabled"),
            ("shunt.dev/capture-dns", "true"),
            ("shunt.dev/interception-mode", "tproxy"),
            ("shunt.dev/exclude-inbound-cidrs", "10.10.0.0/16"),
        ],
        None,
        &DUAL,
    );
}
