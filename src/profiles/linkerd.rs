//! Linkerd's dialect: the `config.linkerd.io/*` annotations its proxy injector writes, planned to
//! behave like `linkerd2-proxy-init`.

use super::{Annotations, Verdict};
use crate::settings::{
    merge, parse_cidr, parse_field, parse_id, parse_list, parse_port_range, port, PortRange,
    ProxyLoopback, Settings, SettingsError,
};

/// Written by the injector on every pod it injected a proxy into.
pub const PROXY_VERSION: &str = "linkerd.io/proxy-version";
pub const INJECT: &str = "linkerd.io/inject";
pub const SKIP_INBOUND_PORTS: &str = "config.linkerd.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "config.linkerd.io/skip-outbound-ports";
pub const SKIP_SUBNETS: &str = "config.linkerd.io/skip-subnets";
pub const PROXY_UID: &str = "config.linkerd.io/proxy-uid";
pub const PROXY_GID: &str = "config.linkerd.io/proxy-gid";

const OUTBOUND: u16 = 4140;
const INBOUND: u16 = 4143;
/// The proxy's control and admin ports: never captured inbound.
const NEVER_INBOUND: [u16; 2] = [4190, 4191];

/// The `linkerd` object of shunt's conflist entry: what linkerd-cni's own config carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkerdConfig {
    pub proxy_uid: u32,
    /// `None`: the proxy is recognised by UID only, as proxy-init does without `--proxy-gid`.
    pub proxy_gid: Option<u32>,
    /// Node-wide additions to every pod's skip lists (`proxyInit.ignoreInboundPorts` and
    /// `ignoreOutboundPorts` in Linkerd's chart).
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
}

impl Default for LinkerdConfig {
    fn default() -> LinkerdConfig {
        LinkerdConfig {
            proxy_uid: 2102,
            proxy_gid: None,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
        }
    }
}

pub fn examine(a: &Annotations, cfg: &LinkerdConfig) -> Result<Verdict, SettingsError> {
    if a.get(PROXY_VERSION).is_none_or(|v| v.trim().is_empty()) {
        return Ok(Verdict::NotMine);
    }
    if a.get(INJECT).is_some_and(|v| v.trim() == "disabled") {
        return Ok(Verdict::PassThrough(format!("{INJECT} is disabled")));
    }
    let get = |k: &str| a.get(k).map(String::as_str);
    let mut s = Settings {
        outbound_port: port(OUTBOUND),
        inbound_port: port(INBOUND),
        proxy_uid: cfg.proxy_uid,
        proxy_gid: cfg.proxy_gid,
        proxy_loopback: ProxyLoopback::Direct,
        ..Settings::default()
    };
    if let Some(v) = get(PROXY_UID) {
        s.proxy_uid = parse_field(PROXY_UID, v, parse_id)?;
    }
    if let Some(v) = get(PROXY_GID) {
        s.proxy_gid = Some(parse_field(PROXY_GID, v, parse_id)?);
    }
    s.exclude_inbound_ports = NEVER_INBOUND
        .iter()
        .map(|&p| PortRange::one(port(p)))
        .collect();
    merge(&mut s.exclude_inbound_ports, &cfg.skip_inbound_ports);
    if let Some(v) = get(SKIP_INBOUND_PORTS) {
        let listed = parse_field(SKIP_INBOUND_PORTS, v, |v| parse_list(v, parse_port_range))?;
        merge(&mut s.exclude_inbound_ports, &listed);
    }
    s.exclude_outbound_ports = cfg.skip_outbound_ports.clone();
    if let Some(v) = get(SKIP_OUTBOUND_PORTS) {
        let listed = parse_field(SKIP_OUTBOUND_PORTS, v, |v| parse_list(v, parse_port_range))?;
        merge(&mut s.exclude_outbound_ports, &listed);
    }
    // proxy-init skips these subnets as *sources* of inbound connections, not as outbound
    // destinations.
    if let Some(v) = get(SKIP_SUBNETS) {
        s.exclude_inbound_sources = parse_field(SKIP_SUBNETS, v, |v| parse_list(v, parse_cidr))?;
    }
    Ok(Verdict::Capture(Box::new(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examine_with(pairs: &[(&str, &str)]) -> Result<Verdict, SettingsError> {
        let mut map: Annotations = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry(PROXY_VERSION.into())
            .or_insert_with(|| "edge-25.4.4".into());
        examine(&map, &LinkerdConfig::default())
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        match examine_with(pairs).unwrap() {
            Verdict::Capture(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_match_proxy_init() {
        let s = settings(&[]);
        assert_eq!((s.outbound_port.get(), s.inbound_port.get()), (4140, 4143));
        assert_eq!((s.proxy_uid, s.proxy_gid), (2102, None));
        assert_eq!(s.exclude_inbound_ports.len(), 2);
        assert_eq!(s.proxy_loopback, ProxyLoopback::Direct);
    }

    #[test]
    fn annotations_apply() {
        let s = settings(&[
            (SKIP_INBOUND_PORTS, "3306, 8000-8080"),
            (SKIP_OUTBOUND_PORTS, "25,587"),
            (SKIP_SUBNETS, "10.10.0.0/16,fd00::/8"),
            (PROXY_UID, "2103"),
            (PROXY_GID, "2104"),
        ]);
        let shown: Vec<String> = s
            .exclude_inbound_ports
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(shown, ["4190", "4191", "3306", "8000:8080"]);
        assert_eq!(s.exclude_outbound_ports.len(), 2);
        assert_eq!(s.exclude_inbound_sources.len(), 2);
        assert_eq!((s.proxy_uid, s.proxy_gid), (2103, Some(2104)));
    }

    #[test]
    fn who_is_not_captured() {
        assert_eq!(
            examine(&Annotations::new(), &LinkerdConfig::default()).unwrap(),
            Verdict::NotMine
        );
        assert!(matches!(
            examine_with(&[(INJECT, "disabled")]).unwrap(),
            Verdict::PassThrough(_)
        ));
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (k, v) in [
            (SKIP_INBOUND_PORTS, "4190-4100"),
            (SKIP_OUTBOUND_PORTS, "smtp"),
            (SKIP_SUBNETS, "10.0.0.0/8,"),
            (PROXY_UID, "linkerd"),
            (PROXY_GID, "99999999999"),
        ] {
            let e = examine_with(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
