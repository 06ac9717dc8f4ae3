//! shunt's own dialect: `shunt.dev/*` annotations, over the conflist entry's `defaults`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Annotations, Verdict};
use crate::cni::type_name;
use crate::settings::{
    parse_bool, parse_cidr, parse_field, parse_id, parse_iface, parse_list, parse_port,
    parse_port_range, parse_select, Interception, Settings, SettingsError,
};

/// Annotation prefix for shunt's own keys.
pub const PREFIX: &str = "shunt.dev/";
pub const REDIRECT: &str = "shunt.dev/redirect";

/// DNS listener port when `capture-dns` is on and `dns-port` is not set (Istio's agent's port).
const DNS_PORT: u16 = 15053;

/// The settings that a pod (or the conflist's `defaults`) can set, by annotation suffix.
/// `redirect` is not among them: only a pod decides whether it is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    InterceptionMode,
    OutboundPort,
    InboundPort,
    ProxyUid,
    ProxyGid,
    IncludeOutboundCidrs,
    ExcludeOutboundCidrs,
    IncludeOutboundPorts,
    ExcludeOutboundPorts,
    IncludeInboundPorts,
    ExcludeInboundPorts,
    ExcludeInboundCidrs,
    ExcludeInterfaces,
    CaptureDns,
    DnsPort,
}

impl Key {
    pub const ALL: [Key; 15] = [
        Key::InterceptionMode,
        Key::OutboundPort,
        Key::InboundPort,
        Key::ProxyUid,
        Key::ProxyGid,
        Key::IncludeOutboundCidrs,
        Key::ExcludeOutboundCidrs,
        Key::IncludeOutboundPorts,
        Key::ExcludeOutboundPorts,
        Key::IncludeInboundPorts,
        Key::ExcludeInboundPorts,
        Key::ExcludeInboundCidrs,
        Key::ExcludeInterfaces,
        Key::CaptureDns,
        Key::DnsPort,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Key::InterceptionMode => "interception-mode",
            Key::OutboundPort => "outbound-port",
            Key::InboundPort => "inbound-port",
            Key::ProxyUid => "proxy-uid",
            Key::ProxyGid => "proxy-gid",
            Key::IncludeOutboundCidrs => "include-outbound-cidrs",
            Key::ExcludeOutboundCidrs => "exclude-outbound-cidrs",
            Key::IncludeOutboundPorts => "include-outbound-ports",
            Key::ExcludeOutboundPorts => "exclude-outbound-ports",
            Key::IncludeInboundPorts => "include-inbound-ports",
            Key::ExcludeInboundPorts => "exclude-inbound-ports",
            Key::ExcludeInboundCidrs => "exclude-inbound-cidrs",
            Key::ExcludeInterfaces => "exclude-interfaces",
            Key::CaptureDns => "capture-dns",
            Key::DnsPort => "dns-port",
        }
    }

    fn from_suffix(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.suffix() == s)
    }
}

/// `defaults` from the conflist entry: raw values keyed like the annotations, checked once at
/// config load so a bad conflist fails every ADD with the same clear message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults(BTreeMap<Key, String>);

impl Defaults {
    pub fn parse(value: &Value) -> Result<Defaults, SettingsError> {
        let Value::Object(map) = value else {
            return Err(SettingsError::invalid(
                "defaults",
                &value.to_string(),
                format!("expected an object, found {}", type_name(value)),
            ));
        };
        let mut out = BTreeMap::new();
        for (k, v) in map {
            let field = format!("defaults.{k}");
            let key = Key::from_suffix(k).ok_or_else(|| {
                SettingsError::invalid(
                    field.clone(),
                    &v.to_string(),
                    format!("unknown key (known: {})", known_suffixes()),
                )
            })?;
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(SettingsError::invalid(
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
        apply(&mut Draft::default(), &defaults.0, "defaults.")?;
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

/// Settings plus the choices that are only resolved once every source has been read.
#[derive(Default)]
struct Draft {
    settings: Settings,
    gid_set: bool,
    capture_dns: bool,
    dns_port: Option<crate::settings::Port>,
}

pub fn examine(annotations: &Annotations, defaults: &Defaults) -> Result<Verdict, SettingsError> {
    match annotations.get(REDIRECT).map(|v| v.trim()) {
        None => return Ok(Verdict::NotMine),
        Some("disabled") => {
            return Ok(Verdict::PassThrough(
                "shunt.dev/redirect is disabled".into(),
            ))
        }
        Some("enabled") => {}
        Some(_) => {
            return Err(SettingsError::invalid(
                REDIRECT,
                &annotations[REDIRECT],
                "expected \"enabled\" or \"disabled\"",
            ))
        }
    }
    let mut draft = Draft::default();
    apply(&mut draft, &defaults.0, "defaults.")?;
    let from_pod: BTreeMap<Key, String> = annotations
        .iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(PREFIX).and_then(Key::from_suffix)?;
            Some((key, value.clone()))
        })
        .collect();
    apply(&mut draft, &from_pod, PREFIX)?;
    let mut s = draft.settings;
    // The proxy GID follows the proxy UID unless someone set it.
    if !draft.gid_set {
        s.proxy_gid = Some(s.proxy_uid);
    }
    if draft.capture_dns {
        s.dns_port = Some(draft.dns_port.unwrap_or(crate::settings::port(DNS_PORT)));
    }
    Ok(Verdict::Capture(Box::new(s)))
}

fn apply(d: &mut Draft, values: &BTreeMap<Key, String>, prefix: &str) -> Result<(), SettingsError> {
    for (&key, raw) in values {
        let field = format!("{prefix}{}", key.suffix());
        let f = field.as_str();
        let s = &mut d.settings;
        match key {
            Key::InterceptionMode => {
                s.interception = parse_field(f, raw, |v| match v.trim() {
                    "redirect" => Ok(Interception::Redirect),
                    "tproxy" => Ok(Interception::Tproxy),
                    _ => Err("expected \"redirect\" or \"tproxy\"".into()),
                })?
            }
            Key::OutboundPort => s.outbound_port = parse_field(f, raw, parse_port)?,
            Key::InboundPort => s.inbound_port = parse_field(f, raw, parse_port)?,
            Key::ProxyUid => s.proxy_uid = parse_field(f, raw, parse_id)?,
            Key::ProxyGid => {
                s.proxy_gid = Some(parse_field(f, raw, parse_id)?);
                d.gid_set = true;
            }
            Key::IncludeOutboundCidrs => {
                s.include_outbound_cidrs = parse_field(f, raw, |v| parse_select(v, parse_cidr))?
            }
            Key::ExcludeOutboundCidrs => {
                s.exclude_outbound_cidrs = parse_field(f, raw, |v| parse_list(v, parse_cidr))?
            }
            Key::IncludeOutboundPorts => {
                s.include_outbound_ports = parse_field(f, raw, |v| parse_list(v, parse_port_range))?
            }
            Key::ExcludeOutboundPorts => {
                s.exclude_outbound_ports = parse_field(f, raw, |v| parse_list(v, parse_port_range))?
            }
            Key::IncludeInboundPorts => {
                s.include_inbound_ports =
                    parse_field(f, raw, |v| parse_select(v, parse_port_range))?
            }
            Key::ExcludeInboundPorts => {
                s.exclude_inbound_ports = parse_field(f, raw, |v| parse_list(v, parse_port_range))?
            }
            Key::ExcludeInboundCidrs => {
                s.exclude_inbound_sources = parse_field(f, raw, |v| parse_list(v, parse_cidr))?
            }
            Key::ExcludeInterfaces => {
                s.exclude_interfaces = parse_field(f, raw, |v| parse_list(v, parse_iface))?
            }
            Key::CaptureDns => d.capture_dns = parse_field(f, raw, parse_bool)?,
            Key::DnsPort => d.dns_port = Some(parse_field(f, raw, parse_port)?),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{port, PortRange, Select};

    fn examine_with(pairs: &[(&str, &str)]) -> Result<Verdict, SettingsError> {
        let map: Annotations = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        examine(&map, &Defaults::default())
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let mut all = vec![(REDIRECT, "enabled")];
        all.extend_from_slice(pairs);
        match examine_with(&all).unwrap() {
            Verdict::Capture(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absent_or_disabled_is_not_captured() {
        assert_eq!(examine_with(&[]).unwrap(), Verdict::NotMine);
        assert!(matches!(
            examine_with(&[(REDIRECT, "disabled")]).unwrap(),
            Verdict::PassThrough(_)
        ));
    }

    #[test]
    fn a_typo_in_redirect_fails_closed() {
        let e = examine_with(&[(REDIRECT, "enable")]).unwrap_err();
        assert!(e.to_string().contains("shunt.dev/redirect"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        assert_eq!(settings(&[]), Settings::default());
    }

    #[test]
    fn gid_follows_uid_unless_set() {
        assert_eq!(
            settings(&[("shunt.dev/proxy-uid", "2102")]).proxy_gid,
            Some(2102)
        );
        let s = settings(&[
            ("shunt.dev/proxy-uid", "2102"),
            ("shunt.dev/proxy-gid", "0"),
        ]);
        assert_eq!((s.proxy_uid, s.proxy_gid), (2102, Some(0)));
    }

    #[test]
    fn dns_tproxy_ranges_and_interfaces() {
        let s = settings(&[
            ("shunt.dev/capture-dns", "true"),
            ("shunt.dev/interception-mode", "tproxy"),
            ("shunt.dev/exclude-inbound-ports", "22, 8000-8100"),
            ("shunt.dev/include-inbound-ports", ""),
            ("shunt.dev/exclude-interfaces", "net1,veth+"),
        ]);
        assert_eq!(s.dns_port, Some(port(15053)));
        assert_eq!(s.interception, Interception::Tproxy);
        assert_eq!(
            s.exclude_inbound_ports,
            vec![
                PortRange::one(port(22)),
                PortRange {
                    first: port(8000),
                    last: port(8100)
                }
            ]
        );
        assert_eq!(s.include_inbound_ports, Select::Only(vec![]));
        assert_eq!(s.exclude_interfaces.len(), 2);
        assert_eq!(
            settings(&[
                ("shunt.dev/capture-dns", "false"),
                ("shunt.dev/dns-port", "53")
            ])
            .dns_port,
            None
        );
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
            ("shunt.dev/interception-mode", "TPROXY!"),
            ("shunt.dev/capture-dns", "yes"),
            ("shunt.dev/exclude-interfaces", "-j ACCEPT"),
        ] {
            let e = examine_with(&[(REDIRECT, "enabled"), (k, v)]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(k) && msg.contains(&format!("{v:?}")), "{msg}");
        }
    }

    #[test]
    fn defaults_are_checked_and_overridden() {
        let d = Defaults::parse(&serde_json::json!({"proxy-uid": 2102, "outbound-port": "4140"}))
            .unwrap();
        let map = Annotations::from([
            (REDIRECT.to_string(), "enabled".to_string()),
            ("shunt.dev/outbound-port".to_string(), "15001".to_string()),
        ]);
        let Verdict::Capture(s) = examine(&map, &d).unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.proxy_uid, s.proxy_gid, s.outbound_port.get()),
            (2102, Some(2102), 15001)
        );
        assert!(Defaults::parse(&serde_json::json!({"proxy_uid": 1})).is_err());
        let e = Defaults::parse(&serde_json::json!({"inbound-port": "x"})).unwrap_err();
        assert!(e.to_string().contains("defaults.inbound-port"), "{e}");
    }
}
