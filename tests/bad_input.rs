//! Every bad input gets a CNI error on stdout with the right code, a message naming the field
//! and the value, a non-zero exit, no panic, and no rule in the pod netns.

mod common;

use common::*;
use serde_json::{json, Value};

enum Input {
    /// A valid ADD config whose annotations are the base ones plus these.
    Annotations(Value),
    /// A valid ADD config with these top-level keys replaced.
    Conf(Value),
    /// Exactly these bytes on stdin.
    Raw(Vec<u8>),
}

struct Case {
    name: &'static str,
    command: &'static str,
    /// Environment changes: (name, Some(value)) sets, (name, None) removes.
    env: Vec<(&'static str, Option<String>)>,
    input: Input,
    code: u64,
    /// Each must appear in the message.
    says: Vec<String>,
}

fn case(name: &'static str, input: Input, code: u64, says: &[&str]) -> Case {
    Case {
        name,
        command: "ADD",
        env: vec![],
        input,
        code,
        says: says.iter().map(|s| s.to_string()).collect(),
    }
}

fn annotation(key: &str, value: &str) -> Input {
    Input::Annotations(json!({ key: value }))
}

/// A bad annotation value: the message must name the annotation and show the value.
fn bad_annotation(name: &'static str, key: &str, value: &str) -> Case {
    let shown = format!("{value:?}");
    let mut c = case(name, annotation(key, value), 7, &[key]);
    if value.chars().count() <= 80 {
        c.says.push(shown);
    }
    c
}

/// A malformed annotation of another mesh's dialect: the pod carries that mesh's marker and not
/// shunt's.
fn bad_mesh_annotation(name: &'static str, marker: (&str, &str), key: &str, value: &str) -> Case {
    let annotations = json!({marker.0: marker.1, key: value});
    let input =
        Input::Conf(json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": annotations}}));
    let mut c = case(name, input, 7, &[key]);
    c.says.push(format!("{value:?}"));
    c
}

const ISTIO: (&str, &str) = ("sidecar.istio.io/status", "{}");
const LINKERD: (&str, &str) = ("linkerd.io/proxy-version", "edge-25.4.4");

fn cases(netns_file: &str) -> Vec<Case> {
    let huge = "8080,".repeat(20_000);
    let many: Vec<String> = (1..=200).map(|p| p.to_string()).collect();
    let with_env = |mut c: Case, env: Vec<(&'static str, Option<String>)>| {
        c.env = env;
        c
    };
    vec![
        // stdin
        case("empty stdin", Input::Raw(vec![]), 6, &["not valid JSON"]),
        case(
            "truncated JSON",
            Input::Raw(b"{\"cniVersion\":".to_vec()),
            6,
            &["not valid JSON"],
        ),
        case(
            "JSON array",
            Input::Raw(b"[1,2]".to_vec()),
            6,
            &["not a JSON object"],
        ),
        case(
            "binary garbage",
            Input::Raw(vec![0xff, 0x00, 0xfe]),
            6,
            &["not valid JSON"],
        ),
        case(
            "oversized stdin",
            Input::Raw(format!("{{\"pad\":\"{}\"}}", "x".repeat(5 << 20)).into_bytes()),
            6,
            &["larger than"],
        ),
        // versions and types
        case(
            "no cniVersion",
            Input::Conf(json!({"cniVersion": null})),
            7,
            &["cniVersion"],
        ),
        case(
            "cniVersion a number",
            Input::Conf(json!({"cniVersion": 1})),
            6,
            &["cniVersion", "a string"],
        ),
        case(
            "unknown cniVersion",
            Input::Conf(json!({"cniVersion": "9.9.9"})),
            1,
            &["\"9.9.9\""],
        ),
        case(
            "pre-chaining cniVersion",
            Input::Conf(json!({"cniVersion": "0.2.0"})),
            1,
            &["\"0.2.0\""],
        ),
        case(
            "no prevResult",
            Input::Conf(json!({"prevResult": null})),
            7,
            &["prevResult", "chained"],
        ),
        case(
            "prevResult a string",
            Input::Conf(json!({"prevResult": "ok"})),
            6,
            &["prevResult"],
        ),
        case(
            "runtimeConfig a string",
            Input::Conf(json!({"runtimeConfig": "x"})),
            6,
            &["runtimeConfig"],
        ),
        case(
            "annotations a list",
            Input::Conf(json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": ["a"]}})),
            6,
            &["io.kubernetes.cri.pod-annotations"],
        ),
        case(
            "annotation value a number",
            Input::Annotations(json!({"shunt.dev/inbound-port": 15006})),
            6,
            &["shunt.dev/inbound-port", "a string"],
        ),
        case(
            "kubernetes pod without the annotations capability",
            Input::Conf(json!({"runtimeConfig": {}})),
            7,
            &["io.kubernetes.cri.pod-annotations", "shop/web"],
        ),
        case(
            "prevResult address garbage",
            Input::Conf(
                json!({"prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]}}),
            ),
            7,
            &["ips[0]", "10.0.0.300/24"],
        ),
        // plugin config
        case(
            "logLevel unknown",
            Input::Conf(json!({"logLevel": "loud"})),
            7,
            &["logLevel", "loud"],
        ),
        case(
            "iptablesBackend unknown",
            Input::Conf(json!({"iptablesBackend": "ebpf"})),
            7,
            &["iptablesBackend", "ebpf"],
        ),
        case(
            "excludeNamespaces a string",
            Input::Conf(json!({"excludeNamespaces": "kube-system"})),
            7,
            &["excludeNamespaces"],
        ),
        case(
            "defaults unknown key",
            Input::Conf(json!({"defaults": {"proxy_uid": 1}})),
            7,
            &["defaults.proxy_uid"],
        ),
        case(
            "defaults bad port",
            Input::Conf(json!({"defaults": {"outbound-port": "http"}})),
            7,
            &["defaults.outbound-port", "http"],
        ),
        // environment
        with_env(
            case(
                "no CNI_COMMAND",
                Input::Conf(json!({})),
                4,
                &["CNI_COMMAND"],
            ),
            vec![("CNI_COMMAND", None)],
        ),
        with_env(
            case(
                "unknown CNI_COMMAND",
                Input::Conf(json!({})),
                4,
                &["CNI_COMMAND", "FROB"],
            ),
            vec![("CNI_COMMAND", Some("FROB".into()))],
        ),
        with_env(
            case(
                "no CNI_CONTAINERID",
                Input::Conf(json!({})),
                4,
                &["CNI_CONTAINERID"],
            ),
            vec![("CNI_CONTAINERID", None)],
        ),
        with_env(
            case("no CNI_IFNAME", Input::Conf(json!({})), 4, &["CNI_IFNAME"]),
            vec![("CNI_IFNAME", None)],
        ),
        with_env(
            case(
                "empty CNI_NETNS on ADD",
                Input::Conf(json!({})),
                4,
                &["CNI_NETNS"],
            ),
            vec![("CNI_NETNS", Some(String::new()))],
        ),
        with_env(
            case(
                "relative CNI_NETNS",
                Input::Conf(json!({})),
                4,
                &["CNI_NETNS", "netns/x"],
            ),
            vec![("CNI_NETNS", Some("netns/x".into()))],
        ),
        with_env(
            case(
                "CNI_NETNS does not exist",
                Input::Conf(json!({})),
                4,
                &["CNI_NETNS", "/run/netns/shunt-nope"],
            ),
            vec![("CNI_NETNS", Some("/run/netns/shunt-nope".into()))],
        ),
        with_env(
            case(
                "CNI_NETNS a regular file",
                Input::Conf(json!({})),
                4,
                &["not a network namespace", netns_file],
            ),
            vec![("CNI_NETNS", Some(netns_file.into()))],
        ),
        with_env(
            case(
                "CNI_NETNS a directory",
                Input::Conf(json!({})),
                4,
                &["not a network namespace", "/tmp"],
            ),
            vec![("CNI_NETNS", Some("/tmp".into()))],
        ),
        with_env(
            case(
                "CNI_NETNS a mount namespace",
                Input::Conf(json!({})),
                4,
                &["not a network namespace", "/proc/self/ns/mnt"],
            ),
            vec![("CNI_NETNS", Some("/proc/self/ns/mnt".into()))],
        ),
        with_env(
            case(
                "CNI_ARGS without =",
                Input::Conf(json!({})),
                4,
                &["CNI_ARGS", "K8S_POD_NAMESPACE"],
            ),
            vec![("CNI_ARGS", Some("K8S_POD_NAMESPACE".into()))],
        ),
        with_env(
            Case {
                command: "CHECK",
                ..case(
                    "CHECK at 0.3.1",
                    Input::Conf(json!({"cniVersion": "0.3.1"})),
                    1,
                    &["CHECK", "0.3.1"],
                )
            },
            vec![],
        ),
        Case {
            command: "STATUS",
            ..case(
                "STATUS at 1.0.0",
                Input::Conf(json!({})),
                1,
                &["STATUS", "1.0.0"],
            )
        },
        // annotations: each malformed
        bad_annotation("redirect typo", "shunt.dev/redirect", "enable"),
        bad_annotation("redirect true", "shunt.dev/redirect", "true"),
        bad_annotation("outbound-port zero", "shunt.dev/outbound-port", "0"),
        bad_annotation("outbound-port too big", "shunt.dev/outbound-port", "65536"),
        bad_annotation("inbound-port negative", "shunt.dev/inbound-port", "-1"),
        bad_annotation("inbound-port blank", "shunt.dev/inbound-port", " "),
        bad_annotation("proxy-uid a name", "shunt.dev/proxy-uid", "istio-proxy"),
        bad_annotation(
            "proxy-uid out of range",
            "shunt.dev/proxy-uid",
            "4294967295",
        ),
        bad_annotation("proxy-gid hex", "shunt.dev/proxy-gid", "0x539"),
        bad_annotation(
            "include-outbound-cidrs prefix",
            "shunt.dev/include-outbound-cidrs",
            "10.0.0.0/33",
        ),
        bad_annotation(
            "include-outbound-cidrs star mixed",
            "shunt.dev/include-outbound-cidrs",
            "*,10.0.0.0/8",
        ),
        bad_annotation(
            "exclude-outbound-cidrs hostname",
            "shunt.dev/exclude-outbound-cidrs",
            "metadata.google.internal",
        ),
        bad_annotation(
            "exclude-outbound-ports empty item",
            "shunt.dev/exclude-outbound-ports",
            "80,,443",
        ),
        bad_annotation(
            "exclude-outbound-ports reversed range",
            "shunt.dev/exclude-outbound-ports",
            "9000-8000",
        ),
        bad_annotation(
            "include-inbound-ports quoted",
            "shunt.dev/include-inbound-ports",
            "80,\"443\"",
        ),
        bad_annotation(
            "exclude-inbound-ports star",
            "shunt.dev/exclude-inbound-ports",
            "*",
        ),
        // injection attempts: nothing may reach iptables-restore input
        bad_annotation(
            "newline + new table",
            "shunt.dev/inbound-port",
            "15006\nCOMMIT\n*filter\n-A INPUT -j DROP",
        ),
        bad_annotation(
            "extra match in a port",
            "shunt.dev/exclude-outbound-ports",
            "22 -j ACCEPT",
        ),
        bad_annotation(
            "CIDR with a jump",
            "shunt.dev/exclude-outbound-cidrs",
            "10.0.0.0/8 -j ACCEPT",
        ),
        bad_annotation(
            "CIDR with a newline",
            "shunt.dev/exclude-outbound-cidrs",
            "10.0.0.0/8\n-A OUTPUT -j DROP",
        ),
        bad_annotation(
            "quote and semicolon",
            "shunt.dev/proxy-uid",
            "1337\"; rm -rf /",
        ),
        bad_annotation("NUL byte", "shunt.dev/outbound-port", "15001\u{0}"),
        bad_annotation("unicode digits", "shunt.dev/outbound-port", "１５００１"),
        // the new shunt keys
        bad_annotation(
            "exclude-interfaces option",
            "shunt.dev/exclude-interfaces",
            "-o eth0",
        ),
        bad_annotation("capture-dns yes", "shunt.dev/capture-dns", "yes"),
        bad_annotation(
            "interception-mode caps",
            "shunt.dev/interception-mode",
            "TPROXY",
        ),
        // Istio's and Linkerd's dialects
        bad_mesh_annotation(
            "istio excludeInboundPorts injection",
            ISTIO,
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "15020\nCOMMIT",
        ),
        bad_mesh_annotation(
            "istio interceptionMode lower case",
            ISTIO,
            "sidecar.istio.io/interceptionMode",
            "tproxy",
        ),
        bad_mesh_annotation(
            "istio excludeInterfaces with a jump",
            ISTIO,
            "traffic.sidecar.istio.io/excludeInterfaces",
            "eth0 -j DROP",
        ),
        bad_mesh_annotation(
            "istio proxy config not YAML",
            ISTIO,
            "proxy.istio.io/config",
            "proxyMetadata: {ISTIO_META_DNS_CAPTURE: [",
        ),
        bad_mesh_annotation(
            "linkerd skip-subnets with a jump",
            LINKERD,
            "config.linkerd.io/skip-subnets",
            "10.0.0.0/8 -j ACCEPT",
        ),
        bad_mesh_annotation(
            "linkerd proxy-uid name",
            LINKERD,
            "config.linkerd.io/proxy-uid",
            "linkerd",
        ),
        case(
            "profiles unknown",
            Input::Conf(json!({"profiles": ["consul"]})),
            7,
            &["profiles"],
        ),
        case(
            "istio proxyUid negative",
            Input::Conf(json!({"istio": {"proxyUid": -1}})),
            7,
            &["istio.proxyUid"],
        ),
        // oversized
        bad_annotation("huge list", "shunt.dev/exclude-inbound-ports", &huge),
        bad_annotation(
            "too many items",
            "shunt.dev/exclude-outbound-ports",
            &many.join(","),
        ),
    ]
}

fn stdin_for(input: &Input, ns: &Ns) -> Vec<u8> {
    let base = || {
        conf(
            "1.0.0",
            Some(prev_result("1.0.0", &ns.path, &[POD_V4, POD_V6])),
            Some(json!({"shunt.dev/redirect": "enabled"})),
            json!({}),
        )
    };
    match input {
        Input::Raw(b) => b.clone(),
        Input::Annotations(extra) => {
            let mut c = base();
            let a = &mut c["runtimeConfig"]["io.kubernetes.cri.pod-annotations"];
            for (k, v) in extra.as_object().unwrap() {
                a[k] = v.clone();
            }
            c.to_string().into_bytes()
        }
        Input::Conf(replace) => {
            let mut c = base();
            for (k, v) in replace.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            c.to_string().into_bytes()
        }
    }
}

#[test]
fn every_bad_input_is_refused_cleanly() {
    let ns = Ns::new("bad");
    let file = std::env::temp_dir().join(format!("shunt-not-a-netns-{}", std::process::id()));
    std::fs::write(&file, b"").unwrap();
    let file_s = file.to_string_lossy().into_owned();
    let cases = cases(&file_s);
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for c in &cases {
        let mut env = cni_env(c.command, &ns.path.to_string_lossy());
        for (k, v) in &c.env {
            env.retain(|(name, _)| name != k);
            if let Some(v) = v {
                env.push((k.to_string(), v.clone()));
            }
        }
        let out = run_shunt(&env, &stdin_for(&c.input, &ns));
        let verdict = std::panic::catch_unwind(|| out.error(c.code));
        match verdict {
            Err(_) => failures.push(format!(
                "{}: exit {} stdout {:?} stderr {:?}",
                c.name, out.code, out.stdout, out.stderr
            )),
            Ok(msg) => {
                for s in &c.says {
                    if !msg.contains(s.as_str()) {
                        failures.push(format!(
                            "{}: message {msg:?} does not mention {s:?}",
                            c.name
                        ));
                    }
                }
                if msg.len() > 600 {
                    failures.push(format!("{}: message is {} bytes long", c.name, msg.len()));
                }
            }
        }
        let left = ns.shunt_rules();
        if !left.is_empty() {
            failures.push(format!("{}: rules left behind: {left:?}", c.name));
        }
    }
    std::fs::remove_file(&file).unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // And the filter table was never touched by an injection attempt.
    assert!(!ns.exec(&["iptables-save"]).contains("DROP"));
}

/// A typo fails the pod at every version, answered in that version.
#[test]
fn errors_answer_in_the_requested_version() {
    let ns = Ns::new("bad");
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let c = conf(
            v,
            Some(prev_result(v, &ns.path, &[POD_V4])),
            Some(json!({"shunt.dev/redirect": "on"})),
            json!({}),
        );
        let out = shunt("ADD", &ns.path.to_string_lossy(), &c);
        out.error(7);
        assert_eq!(out.json()["cniVersion"], v);
    }
}
