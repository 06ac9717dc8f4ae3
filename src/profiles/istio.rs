//! Istio's dialect: the annotations Istio's sidecar injector writes, read the way istio-cni reads
//! them, planned to behave like `istio-iptables` (same ports, same exclusions, same loopback and
//! passthrough handling), in shunt's own chains.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use super::{Annotations, Verdict};
use crate::settings::{
    merge, parse_bool, parse_cidr, parse_field, parse_iface, parse_list, parse_port_range,
    parse_select, port, Interception, PortRange, ProxyLoopback, Select, Settings, SettingsError,
};

/// Written by the injector on every pod it injected; its presence is what marks an Istio pod.
pub const STATUS: &str = "sidecar.istio.io/status";
pub const INJECT: &str = "sidecar.istio.io/inject";
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// The proxy-metadata key (an environment variable of istio-proxy) that turns on DNS capture.
pub const DNS_CAPTURE: &str = "ISTIO_META_DNS_CAPTURE";

const OUTBOUND: u16 = 15001;
const INBOUND: u16 = 15006;
/// HBONE tunnel: never captured inbound, and the proxy's own tunnel traffic is never looped back.
const TUNNEL: u16 = 15008;
/// pilot-agent status, health and Envoy's Prometheus port: never captured inbound.
const NEVER_INBOUND: [u16; 3] = [15020, 15021, 15090];
/// What istio-cni excludes outbound when the pod does not say.
const DEFAULT_EXCLUDE_OUTBOUND: u16 = 15020;
const DNS: u16 = 15053;

/// The `istio` object of shunt's conflist entry: what istio-cni would learn from the API server
/// (the proxy container's IDs) or from mesh-wide config (DNS capture), fixed per node instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioConfig {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// Mesh-wide `ISTIO_META_DNS_CAPTURE`; a pod's `proxy.istio.io/config` overrides it.
    pub dns_capture: bool,
}

impl Default for IstioConfig {
    fn default() -> IstioConfig {
        IstioConfig {
            proxy_uid: 1337,
            proxy_gid: 1337,
            dns_capture: false,
        }
    }
}

fn ports(list: &[u16]) -> Vec<PortRange> {
    list.iter().map(|&p| PortRange::one(port(p))).collect()
}

pub fn examine(a: &Annotations, cfg: &IstioConfig) -> Result<Verdict, SettingsError> {
    let Some(status) = a.get(STATUS) else {
        return Ok(Verdict::NotMine);
    };
    if let Some(v) = a.get(INJECT) {
        if !parse_field(INJECT, v, parse_bool)? {
            return Ok(Verdict::PassThrough(format!("{INJECT} is {v:?}")));
        }
    }
    // A pod injected for init-container mode programs its own rules with istio-init; doing it
    // again would double them.
    if init_containers(status).iter().any(|c| c == "istio-init") {
        return Ok(Verdict::PassThrough(
            "injected with the istio-init container, which programs the pod itself".into(),
        ));
    }
    let interception = match a.get(INTERCEPTION_MODE).map(|v| v.trim()) {
        None | Some("REDIRECT") => Interception::Redirect,
        Some("TPROXY") => Interception::Tproxy,
        Some("NONE") => {
            return Ok(Verdict::PassThrough(format!("{INTERCEPTION_MODE} is NONE")));
        }
        Some(_) => {
            return Err(SettingsError::invalid(
                INTERCEPTION_MODE,
                &a[INTERCEPTION_MODE],
                "expected REDIRECT, TPROXY or NONE",
            ))
        }
    };
    let get = |k: &str| a.get(k).map(String::as_str);

    let mut s = Settings {
        interception,
        outbound_port: port(OUTBOUND),
        inbound_port: port(INBOUND),
        proxy_uid: cfg.proxy_uid,
        proxy_gid: Some(cfg.proxy_gid),
        passthrough_sources: vec![
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
            IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
        ],
        proxy_loopback: ProxyLoopback::NonLocalhost,
        ..Settings::default()
    };
    s.include_outbound_cidrs = match get(INCLUDE_OUTBOUND_IP_RANGES) {
        None => Select::All,
        Some(v) => parse_field(INCLUDE_OUTBOUND_IP_RANGES, v, |v| {
            parse_select(v, parse_cidr)
        })?,
    };
    if let Some(v) = get(EXCLUDE_OUTBOUND_IP_RANGES) {
        s.exclude_outbound_cidrs =
            parse_field(EXCLUDE_OUTBOUND_IP_RANGES, v, |v| parse_list(v, parse_cidr))?;
    }
    if let Some(v) = get(INCLUDE_INBOUND_PORTS) {
        s.include_inbound_ports = parse_field(INCLUDE_INBOUND_PORTS, v, |v| {
            parse_select(v, parse_port_range)
        })?;
    }
    // The tunnel port first, the pod's exclusions, then the agent's and Envoy's own ports,
    // which istio-cni appends to whatever the pod says.
    s.exclude_inbound_ports = ports(&[TUNNEL]);
    if let Some(v) = get(EXCLUDE_INBOUND_PORTS) {
        let listed = parse_field(EXCLUDE_INBOUND_PORTS, v, |v| {
            parse_list(v, parse_port_range)
        })?;
        merge(&mut s.exclude_inbound_ports, &listed);
    }
    merge(&mut s.exclude_inbound_ports, &ports(&NEVER_INBOUND));
    s.exclude_outbound_ports = match get(EXCLUDE_OUTBOUND_PORTS) {
        None => ports(&[DEFAULT_EXCLUDE_OUTBOUND]),
        Some(v) => parse_field(EXCLUDE_OUTBOUND_PORTS, v, |v| {
            parse_list(v, parse_port_range)
        })?,
    };
    if let Some(v) = get(INCLUDE_OUTBOUND_PORTS) {
        s.include_outbound_ports = parse_field(INCLUDE_OUTBOUND_PORTS, v, |v| {
            parse_list(v, parse_port_range)
        })?;
    }
    if let Some(v) = get(EXCLUDE_INTERFACES) {
        s.exclude_interfaces = parse_field(EXCLUDE_INTERFACES, v, |v| parse_list(v, parse_iface))?;
    }
    let dns = match get(PROXY_CONFIG) {
        Some(v) => parse_field(PROXY_CONFIG, v, dns_capture_in)?.unwrap_or(cfg.dns_capture),
        None => cfg.dns_capture,
    };
    if dns {
        s.dns_port = Some(port(DNS));
    }
    Ok(Verdict::Capture(Box::new(s)))
}

/// The init containers the injector listed in its status annotation (JSON). Older or hand-made
/// values that are not JSON simply list none.
fn init_containers(status: &str) -> Vec<String> {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(status) else {
        return Vec::new();
    };
    match m.get("initContainers") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// `proxyMetadata.ISTIO_META_DNS_CAPTURE` from a ProxyConfig written in YAML (or JSON, which is
/// YAML); `None` when it is not set.
fn dns_capture_in(config: &str) -> Result<Option<bool>, String> {
    let docs = YamlLoader::load_from_str(config).map_err(|e| format!("not valid YAML: {e}"))?;
    let Some(doc) = docs.first() else {
        return Ok(None);
    };
    if !matches!(doc, Yaml::Hash(_) | Yaml::Null) {
        return Err("expected a ProxyConfig mapping".into());
    }
    let meta = &doc["proxyMetadata"];
    if !matches!(meta, Yaml::Hash(_) | Yaml::BadValue | Yaml::Null) {
        return Err("proxyMetadata: expected a mapping".into());
    }
    match &meta[DNS_CAPTURE] {
        Yaml::BadValue | Yaml::Null => Ok(None),
        Yaml::Boolean(b) => Ok(Some(*b)),
        Yaml::String(s) => parse_bool(s)
            .map(Some)
            .map_err(|e| format!("proxyMetadata.{DNS_CAPTURE}: {e}")),
        other => Err(format!(
            "proxyMetadata.{DNS_CAPTURE}: expected \"true\" or \"false\", found {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examine_with(pairs: &[(&str, &str)]) -> Result<Verdict, SettingsError> {
        let mut map: Annotations = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry(STATUS.into()).or_insert_with(|| {
            r#"{"initContainers":["istio-validation"],"containers":["istio-proxy"]}"#.into()
        });
        examine(&map, &IstioConfig::default())
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        match examine_with(pairs).unwrap() {
            Verdict::Capture(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    fn shown(r: &[PortRange]) -> String {
        r.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn defaults_match_istio_cni() {
        let s = settings(&[]);
        assert_eq!(shown(&s.exclude_inbound_ports), "15008,15020,15021,15090");
        assert_eq!(shown(&s.exclude_outbound_ports), "15020");
        assert_eq!(s.include_inbound_ports, Select::All);
        assert_eq!((s.proxy_uid, s.proxy_gid), (1337, Some(1337)));
        assert_eq!(s.dns_port, None);
        let s = settings(&[
            (EXCLUDE_INBOUND_PORTS, "22,15021"),
            (EXCLUDE_OUTBOUND_PORTS, ""),
        ]);
        assert_eq!(
            shown(&s.exclude_inbound_ports),
            "15008,22,15021,15020,15090"
        );
        assert!(s.exclude_outbound_ports.is_empty());
    }

    #[test]
    fn who_is_not_captured() {
        let map = Annotations::new();
        assert_eq!(
            examine(&map, &IstioConfig::default()).unwrap(),
            Verdict::NotMine
        );
        for pairs in [
            vec![(INJECT, "false")],
            vec![(INTERCEPTION_MODE, "NONE")],
            vec![(
                STATUS,
                r#"{"initContainers":["istio-init"],"containers":["istio-proxy"]}"#,
            )],
        ] {
            assert!(
                matches!(examine_with(&pairs).unwrap(), Verdict::PassThrough(_)),
                "{pairs:?}"
            );
        }
        // Hand-written status values that are not JSON still mark an injected pod.
        assert!(matches!(
            examine_with(&[(STATUS, "true"), (INJECT, "true")]).unwrap(),
            Verdict::Capture(_)
        ));
    }

    #[test]
    fn dns_capture_from_proxy_config() {
        for (config, want) in [
            ("proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n", true),
            ("proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: true\n", true),
            (
                r#"{"proxyMetadata":{"ISTIO_META_DNS_CAPTURE":"true"}}"#,
                true,
            ),
            ("holdApplicationUntilProxyStarts: true\n", false),
            ("proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"false\"}", false),
            ("", false),
        ] {
            let s = settings(&[(PROXY_CONFIG, config)]);
            assert_eq!(s.dns_port.is_some(), want, "{config:?}");
        }
        let cfg = IstioConfig {
            dns_capture: true,
            ..IstioConfig::default()
        };
        let mut map = Annotations::from([(STATUS.to_string(), "{}".to_string())]);
        let Verdict::Capture(s) = examine(&map, &cfg).unwrap() else {
            panic!()
        };
        assert_eq!(s.dns_port, Some(port(15053)));
        map.insert(
            PROXY_CONFIG.into(),
            "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"false\"".into(),
        );
        let Verdict::Capture(s) = examine(&map, &cfg).unwrap() else {
            panic!()
        };
        assert_eq!(
            s.dns_port, None,
            "the pod's proxy config overrides the node's"
        );
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (k, v) in [
            (INJECT, "flase"),
            (INTERCEPTION_MODE, "tproxy"),
            (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/40"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "*"),
            (INCLUDE_INBOUND_PORTS, "http"),
            (EXCLUDE_INBOUND_PORTS, "70000"),
            (INCLUDE_OUTBOUND_PORTS, "1,,2"),
            (EXCLUDE_OUTBOUND_PORTS, "x"),
            (EXCLUDE_INTERFACES, "eth0 eth1"),
            (PROXY_CONFIG, "proxyMetadata: [1, 2"),
            (
                PROXY_CONFIG,
                "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"maybe\"",
            ),
        ] {
            let e = examine_with(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
