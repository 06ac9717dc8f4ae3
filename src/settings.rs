//! Pod settings: the plugin's conflist entry and the pod's annotations, turned into typed values.
//!
//! Every value a pod can set is parsed here into ports, CIDRs and numeric IDs. The planner only
//! ever sees these types, so no annotation text can reach `iptables-restore` input.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::cni::{type_name, PodRef};

/// Annotation prefix for shunt's own keys.
pub const PREFIX: &str = "shunt.dev/";
pub const REDIRECT: &str = "shunt.dev/redirect";

/// Longest annotation value read. Longer values are refused rather than truncated.
pub const MAX_VALUE_LEN: usize = 8192;
/// Most entries in one list; each becomes at least one rule per address family.
pub const MAX_LIST_ITEMS: usize = 128;

/// The settings that a pod (or the conflist's `defaults`) can set, by annotation suffix.
/// `redirect` is not among them: only a pod decides whether it is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    OutboundPort,
    InboundPort,
    ProxyUid,
    ProxyGid,
    IncludeOutboundCidrs,
    ExcludeOutboundCidrs,
    ExcludeOutboundPorts,
    IncludeInboundPorts,
    ExcludeInboundPorts,
}

impl Key {
    pub const ALL: [Key; 9] = [
        Key::OutboundPort,
        Key::InboundPort,
        Key::ProxyUid,
        Key::ProxyGid,
        Key::IncludeOutboundCidrs,
        Key::ExcludeOutboundCidrs,
        Key::ExcludeOutboundPorts,
        Key::IncludeInboundPorts,
        Key::ExcludeInboundPorts,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Key::OutboundPort => "outbound-port",
            Key::InboundPort => "inbound-port",
            Key::ProxyUid => "proxy-uid",
            Key::ProxyGid => "proxy-gid",
            Key::IncludeOutboundCidrs => "include-outbound-cidrs",
            Key::ExcludeOutboundCidrs => "exclude-outbound-cidrs",
            Key::ExcludeOutboundPorts => "exclude-outbound-ports",
            Key::IncludeInboundPorts => "include-inbound-ports",
            Key::ExcludeInboundPorts => "exclude-inbound-ports",
        }
    }

    fn from_suffix(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.suffix() == s)
    }
}

/// Where a bad value came from, so the error names the exact knob to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Annotation,
    Defaults,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{field} = {value}: {why}")]
    Invalid {
        field: String,
        value: Shown,
        why: String,
    },
    #[error("pod {pod} carries no annotations from the runtime: add \"capabilities\": {{\"io.kubernetes.cri.pod-annotations\": true}} to shunt's conflist entry (needs containerd ≥1.5 or CRI-O ≥1.29)")]
    NoAnnotations { pod: String },
}

/// A value as it may be shown in an error: quoted, escaped, and cut short when huge, so that a
/// hostile annotation can neither flood the logs nor break their lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    pub fn new(raw: &str) -> Shown {
        const KEEP: usize = 80;
        if raw.chars().count() <= KEEP {
            return Shown(format!("{raw:?}"));
        }
        let head: String = raw.chars().take(KEEP).collect();
        Shown(format!("{head:?}… ({} bytes)", raw.len()))
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A TCP port, 1–65535.
pub type Port = NonZeroU16;

/// An include list: everything (`*`), or only the listed items (possibly none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select<T> {
    All,
    Only(Vec<T>),
}

/// What shunt programs for one pod that asked to be captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub outbound_port: Port,
    pub inbound_port: Port,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub include_outbound_cidrs: Select<IpNetwork>,
    pub exclude_outbound_cidrs: Vec<IpNetwork>,
    pub exclude_outbound_ports: Vec<Port>,
    pub include_inbound_ports: Select<Port>,
    pub exclude_inbound_ports: Vec<Port>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            outbound_port: port(15001),
            inbound_port: port(15006),
            proxy_uid: 1337,
            proxy_gid: 1337,
            include_outbound_cidrs: Select::All,
            exclude_outbound_cidrs: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_inbound_ports: Select::All,
            exclude_inbound_ports: Vec::new(),
        }
    }
}

const fn port(n: u16) -> Port {
    match NonZeroU16::new(n) {
        Some(p) => p,
        None => panic!("port 0"),
    }
}

/// Whether and how a pod is captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the pod alone; the reason is for the log.
    PassThrough(&'static str),
    Redirect(Box<Settings>),
}

/// `defaults` from the conflist entry: raw values keyed like the annotations, checked once at
/// config load so a bad conflist fails every ADD with the same clear message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults(BTreeMap<Key, String>);

impl Defaults {
    pub fn parse(value: &Value) -> Result<Defaults, SettingsError> {
        let Value::Object(map) = value else {
            return Err(invalid_field(
                "defaults".into(),
                &value.to_string(),
                format!("expected an object, found {}", type_name(value)),
            ));
        };
        let mut out = BTreeMap::new();
        for (k, v) in map {
            let field = format!("defaults.{k}");
            let key = Key::from_suffix(k).ok_or_else(|| {
                invalid_field(
                    field.clone(),
                    &v.to_string(),
                    format!("unknown key (known: {})", known_suffixes()),
                )
            })?;
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(invalid_field(
                        field,
                        &other.to_string(),
                        format!("expected a string or number, found {}", type_name(other)),
                    ))
                }
            };
            out.insert(key, text);
        }
        let defaults = Defaults(out);
        // Validate now: the same parser runs per pod, but a broken default is the node's fault
        // and should be reported as such.
        apply(&mut Settings::default(), &defaults.0, &Origin::Defaults)?;
        Ok(defaults)
    }
}

fn known_suffixes() -> String {
    Key::ALL
        .iter()
        .map(|k| k.suffix())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides for one pod. `annotations` is `None` when the runtime passed none at all.
pub fn decide(
    pod: &PodRef,
    annotations: Option<&BTreeMap<String, String>>,
    exclude_namespaces: &[String],
    defaults: &Defaults,
) -> Result<Decision, SettingsError> {
    if let Some(ns) = &pod.namespace {
        if exclude_namespaces.iter().any(|e| e == ns) {
            return Ok(Decision::PassThrough("namespace is excluded"));
        }
    }
    let Some(annotations) = annotations else {
        // A Kubernetes pod whose annotations we cannot see may well have asked for capture;
        // starting it uncaptured would fail open.
        if pod.is_kubernetes() {
            return Err(SettingsError::NoAnnotations {
                pod: pod.to_string(),
            });
        }
        return Ok(Decision::PassThrough(
            "no annotations (not a Kubernetes pod)",
        ));
    };
    match annotations.get(REDIRECT).map(|v| v.trim()) {
        None => return Ok(Decision::PassThrough("no shunt.dev/redirect annotation")),
        Some("disabled") => return Ok(Decision::PassThrough("shunt.dev/redirect is disabled")),
        Some("enabled") => {}
        Some(_) => {
            return Err(invalid_field(
                REDIRECT.into(),
                &annotations[REDIRECT],
                "expected \"enabled\" or \"disabled\"".into(),
            ))
        }
    }
    let mut settings = Settings::default();
    let mut gid_set = false;
    apply(&mut settings, &defaults.0, &Origin::Defaults)?;
    gid_set |= defaults.0.contains_key(&Key::ProxyGid);
    let mut from_pod = BTreeMap::new();
    for (name, value) in annotations {
        if let Some(key) = name.strip_prefix(PREFIX).and_then(Key::from_suffix) {
            from_pod.insert(key, value.clone());
        }
    }
    apply(&mut settings, &from_pod, &Origin::Annotation)?;
    gid_set |= from_pod.contains_key(&Key::ProxyGid);
    // The proxy GID follows the proxy UID unless someone set it.
    if !gid_set {
        settings.proxy_gid = settings.proxy_uid;
    }
    Ok(Decision::Redirect(Box::new(settings)))
}

fn apply(
    s: &mut Settings,
    values: &BTreeMap<Key, String>,
    origin: &Origin,
) -> Result<(), SettingsError> {
    for (&key, raw) in values {
        let field = match origin {
            Origin::Annotation => format!("{PREFIX}{}", key.suffix()),
            Origin::Defaults => format!("defaults.{}", key.suffix()),
        };
        let bad = |why: String| invalid_field(field.clone(), raw, why);
        if raw.len() > MAX_VALUE_LEN {
            return Err(bad(format!("longer than {MAX_VALUE_LEN} bytes")));
        }
        match key {
            Key::OutboundPort => s.outbound_port = parse_port(raw.trim()).map_err(bad)?,
            Key::InboundPort => s.inbound_port = parse_port(raw.trim()).map_err(bad)?,
            Key::ProxyUid => s.proxy_uid = parse_id(raw.trim()).map_err(bad)?,
            Key::ProxyGid => s.proxy_gid = parse_id(raw.trim()).map_err(bad)?,
            Key::IncludeOutboundCidrs => {
                s.include_outbound_cidrs = parse_select(raw, parse_cidr).map_err(bad)?
            }
            Key::ExcludeOutboundCidrs => {
                s.exclude_outbound_cidrs = parse_list(raw, parse_cidr).map_err(bad)?
            }
            Key::ExcludeOutboundPorts => {
                s.exclude_outbound_ports = parse_list(raw, parse_port).map_err(bad)?
            }
            Key::IncludeInboundPorts => {
                s.include_inbound_ports = parse_select(raw, parse_port).map_err(bad)?
            }
            Key::ExcludeInboundPorts => {
                s.exclude_inbound_ports = parse_list(raw, parse_port).map_err(bad)?
            }
        }
    }
    Ok(())
}

fn invalid_field(field: String, raw: &str, why: String) -> SettingsError {
    SettingsError::Invalid {
        field,
        value: Shown::new(raw),
        why,
    }
}

fn parse_port(s: &str) -> Result<Port, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a port number (1-65535)"));
    }
    s.parse::<u16>()
        .ok()
        .and_then(NonZeroU16::new)
        .ok_or_else(|| format!("{s} is not a port number (1-65535)"))
}

fn parse_id(s: &str) -> Result<u32, String> {
    // Numeric only: a name would need an NSS lookup on the node, which can take seconds.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a numeric ID"));
    }
    match s.parse::<u32>() {
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(format!("{s} is out of range (0-4294967294)")),
    }
}

/// A CIDR or a bare address. Host bits are cleared, as iptables would, so the plan matches what
/// `iptables-save` later reports.
fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let net = if s.contains('/') {
        s.parse::<IpNetwork>()
            .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 CIDR"))?
    } else {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 CIDR"))?;
        IpNetwork::from(ip)
    };
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| format!("{s:?}: {e}"))
}

fn items(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim)
}

fn parse_list<T: PartialEq>(
    raw: &str,
    item: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<T> = Vec::new();
    for part in items(raw) {
        if part.is_empty() {
            return Err("empty item in the list".into());
        }
        if part == "*" {
            return Err("\"*\" is not allowed in an exclude list".into());
        }
        let v = item(part)?;
        if !out.contains(&v) {
            out.push(v);
        }
        if out.len() > MAX_LIST_ITEMS {
            return Err(format!("more than {MAX_LIST_ITEMS} items"));
        }
    }
    Ok(out)
}

fn parse_select<T: PartialEq>(
    raw: &str,
    item: fn(&str) -> Result<T, String>,
) -> Result<Select<T>, String> {
    if raw.trim() == "*" {
        return Ok(Select::All);
    }
    if items(raw).any(|p| p == "*") {
        return Err("\"*\" must stand alone".into());
    }
    parse_list(raw, item).map(Select::Only)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            namespace: Some("shop".into()),
            name: Some("web".into()),
            uid: None,
        }
    }

    fn decide_with(pairs: &[(&str, &str)]) -> Result<Decision, SettingsError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        decide(
            &pod(),
            Some(&map),
            &["kube-system".into()],
            &Defaults::default(),
        )
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let mut all = vec![(REDIRECT, "enabled")];
        all.extend_from_slice(pairs);
        match decide_with(&all).unwrap() {
            Decision::Redirect(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absent_annotation_passes_through() {
        assert!(matches!(
            decide_with(&[]).unwrap(),
            Decision::PassThrough(_)
        ));
        assert!(matches!(
            decide_with(&[(REDIRECT, "disabled")]).unwrap(),
            Decision::PassThrough(_)
        ));
    }

    #[test]
    fn a_typo_in_redirect_fails_closed() {
        let e = decide_with(&[(REDIRECT, "enable")]).unwrap_err();
        assert!(e.to_string().contains("shunt.dev/redirect"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let s = settings(&[]);
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn lists_trim_dedupe_and_normalise() {
        let s = settings(&[
            (
                "shunt.dev/exclude-outbound-cidrs",
                " 10.1.2.3/8 , 2001:db8::1, 10.0.0.0/8",
            ),
            ("shunt.dev/exclude-inbound-ports", "22, 9090"),
            ("shunt.dev/include-inbound-ports", ""),
        ]);
        assert_eq!(
            s.exclude_outbound_cidrs,
            vec![
                "10.0.0.0/8".parse::<IpNetwork>().unwrap(),
                "2001:db8::1/128".parse().unwrap()
            ]
        );
        assert_eq!(s.exclude_inbound_ports, vec![port(22), port(9090)]);
        assert_eq!(s.include_inbound_ports, Select::Only(vec![]));
    }

    #[test]
    fn gid_follows_uid_unless_set() {
        assert_eq!(settings(&[("shunt.dev/proxy-uid", "2102")]).proxy_gid, 2102);
        let s = settings(&[
            ("shunt.dev/proxy-uid", "2102"),
            ("shunt.dev/proxy-gid", "0"),
        ]);
        assert_eq!((s.proxy_uid, s.proxy_gid), (2102, 0));
    }

    #[test]
    fn bad_values_name_field_and_value() {
        for (k, v) in [
            ("shunt.dev/outbound-port", "0"),
            ("shunt.dev/inbound-port", "65536"),
            ("shunt.dev/proxy-uid", "istio-proxy"),
            ("shunt.dev/proxy-gid", "-1"),
            ("shunt.dev/include-outbound-cidrs", "10.0.0.0/33"),
            ("shunt.dev/exclude-outbound-ports", "80,,81"),
            ("shunt.dev/exclude-outbound-cidrs", "*"),
            ("shunt.dev/include-inbound-ports", "*,80"),
        ] {
            let e = decide_with(&[(REDIRECT, "enabled"), (k, v)]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(k) && msg.contains(&format!("{v:?}")), "{msg}");
        }
    }

    #[test]
    fn huge_values_are_cut_in_messages() {
        let big = "1,".repeat(10_000);
        let e = decide_with(&[
            (REDIRECT, "enabled"),
            ("shunt.dev/exclude-inbound-ports", &big),
        ])
        .unwrap_err();
        assert!(e.to_string().len() < 400);
    }

    #[test]
    fn excluded_namespace_wins() {
        let p = PodRef {
            namespace: Some("kube-system".into()),
            ..pod()
        };
        let map = BTreeMap::from([(REDIRECT.to_string(), "enabled".to_string())]);
        assert!(matches!(
            decide(
                &p,
                Some(&map),
                &["kube-system".into()],
                &Defaults::default()
            )
            .unwrap(),
            Decision::PassThrough(_)
        ));
    }

    #[test]
    fn kubernetes_pod_without_annotations_fails_closed() {
        assert!(matches!(
            decide(&pod(), None, &[], &Defaults::default()),
            Err(SettingsError::NoAnnotations { .. })
        ));
        assert!(matches!(
            decide(&PodRef::default(), None, &[], &Defaults::default()).unwrap(),
            Decision::PassThrough(_)
        ));
    }

    #[test]
    fn defaults_are_checked_and_overridden() {
        let d = Defaults::parse(&serde_json::json!({"proxy-uid": 2102, "outbound-port": "4140"}))
            .unwrap();
        let map = BTreeMap::from([
            (REDIRECT.to_string(), "enabled".to_string()),
            ("shunt.dev/outbound-port".to_string(), "15001".to_string()),
        ]);
        let Decision::Redirect(s) = decide(&pod(), Some(&map), &[], &d).unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.proxy_uid, s.proxy_gid, s.outbound_port.get()),
            (2102, 2102, 15001)
        );
        assert!(Defaults::parse(&serde_json::json!({"proxy_uid": 1})).is_err());
        assert!(Defaults::parse(&serde_json::json!({"inbound-port": "x"})).is_err());
    }
}
