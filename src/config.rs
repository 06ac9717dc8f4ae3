//! The plugin's own keys in its conflist entry: node-wide policy set by whoever installed shunt.

use log::LevelFilter;
use serde_json::{Map, Value};

use crate::cni::type_name;
use crate::profiles::istio::IstioConfig;
use crate::profiles::linkerd::LinkerdConfig;
use crate::profiles::shunt::Defaults;
use crate::profiles::Profile;
use crate::settings::{parse_id, parse_list, parse_port_range, SettingsError};

/// Which iptables implementation writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Follow the node: legacy when the host already has legacy tables, nf_tables otherwise.
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    pub exclude_namespaces: Vec<String>,
    pub log_level: LevelFilter,
    pub iptables_backend: BackendChoice,
    /// Which annotation dialects are read, in the order they are asked.
    pub profiles: Vec<Profile>,
    /// Defaults for the shunt profile.
    pub defaults: Defaults,
    pub istio: IstioConfig,
    pub linkerd: LinkerdConfig,
    /// Where `shunt-install` listens for the plugin's log lines (`logSocket`).
    pub log_socket: Option<std::path::PathBuf>,
}

impl Default for PluginConfig {
    fn default() -> PluginConfig {
        PluginConfig {
            exclude_namespaces: vec!["kube-system".into()],
            log_level: LevelFilter::Info,
            iptables_backend: BackendChoice::Auto,
            profiles: Profile::ALL.to_vec(),
            defaults: Defaults::default(),
            istio: IstioConfig::default(),
            linkerd: LinkerdConfig::default(),
            log_socket: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("conflist field {field}: expected {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("conflist field {field}: {why}")]
    Invalid { field: String, why: String },
    #[error(transparent)]
    Defaults(#[from] SettingsError),
}

impl PluginConfig {
    pub fn from_conf(raw: &Map<String, Value>) -> Result<PluginConfig, ConfigError> {
        let mut cfg = PluginConfig::default();
        if let Some(v) = raw.get("excludeNamespaces") {
            let bad = || wrong("excludeNamespaces", "an array of strings", v);
            let Value::Array(items) = v else {
                return Err(bad());
            };
            cfg.exclude_namespaces = items
                .iter()
                .map(|i| i.as_str().map(str::to_owned).ok_or_else(bad))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = raw.get("logLevel") {
            cfg.log_level = match v.as_str() {
                Some("off") => LevelFilter::Off,
                Some("error") => LevelFilter::Error,
                Some("warn") => LevelFilter::Warn,
                Some("info") => LevelFilter::Info,
                Some("debug") => LevelFilter::Debug,
                Some("trace") => LevelFilter::Trace,
                _ => return Err(wrong("logLevel", "off|error|warn|info|debug|trace", v)),
            };
        }
        if let Some(v) = raw.get("iptablesBackend") {
            cfg.iptables_backend = match v.as_str() {
                Some("auto") => BackendChoice::Auto,
                Some("nft") => BackendChoice::Nft,
                Some("legacy") => BackendChoice::Legacy,
                _ => return Err(wrong("iptablesBackend", "auto|nft|legacy", v)),
            };
        }
        if let Some(v) = raw.get("defaults") {
            cfg.defaults = Defaults::parse(v)?;
        }
        if let Some(v) = raw.get("profiles") {
            let bad = || {
                wrong(
                    "profiles",
                    "an array of \"shunt\", \"istio\", \"linkerd\"",
                    v,
                )
            };
            let Value::Array(items) = v else {
                return Err(bad());
            };
            let mut profiles = Vec::new();
            for item in items {
                let p = item.as_str().and_then(Profile::parse).ok_or_else(bad)?;
                if !profiles.contains(&p) {
                    profiles.push(p);
                }
            }
            cfg.profiles = profiles;
        }
        if let Some(v) = raw.get("istio") {
            let m = object("istio", v)?;
            for (k, val) in m {
                let field = format!("istio.{k}");
                match k.as_str() {
                    "proxyUid" => cfg.istio.proxy_uid = id(&field, val)?,
                    "proxyGid" => cfg.istio.proxy_gid = id(&field, val)?,
                    "dnsCapture" => {
                        cfg.istio.dns_capture = val.as_bool().ok_or_else(|| {
                            invalid(&field, format!("expected true or false, found {val}"))
                        })?
                    }
                    _ => {
                        return Err(invalid(
                            &field,
                            "unknown key (known: proxyUid, proxyGid, dnsCapture)".into(),
                        ))
                    }
                }
            }
        }
        if let Some(v) = raw.get("linkerd") {
            let m = object("linkerd", v)?;
            for (k, val) in m {
                let field = format!("linkerd.{k}");
                match k.as_str() {
                    "proxyUid" => cfg.linkerd.proxy_uid = id(&field, val)?,
                    "proxyGid" => cfg.linkerd.proxy_gid = Some(id(&field, val)?),
                    "skipInboundPorts" => cfg.linkerd.skip_inbound_ports = port_list(&field, val)?,
                    "skipOutboundPorts" => cfg.linkerd.skip_outbound_ports = port_list(&field, val)?,
                    _ => return Err(invalid(&field, "unknown key (known: proxyUid, proxyGid, skipInboundPorts, skipOutboundPorts)".into())),
                }
            }
        }
        if let Some(v) = raw.get("logSocket") {
            match v.as_str() {
                Some(p) if p.starts_with('/') => cfg.log_socket = Some(p.into()),
                _ => return Err(wrong("logSocket", "an absolute path", v)),
            }
        }
        Ok(cfg)
    }
}

fn invalid(field: &str, why: String) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        why,
    }
}

fn object<'a>(field: &'static str, v: &'a Value) -> Result<&'a Map<String, Value>, ConfigError> {
    v.as_object().ok_or_else(|| wrong(field, "an object", v))
}

/// A numeric ID, as a JSON number or a string of digits.
fn id(field: &str, v: &Value) -> Result<u32, ConfigError> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => {
            return Err(invalid(
                field,
                format!("expected a numeric ID, found {other}"),
            ))
        }
    };
    parse_id(&text).map_err(|why| invalid(field, why))
}

/// Ports and ranges, as `"25,8000-9000"` or `[25, "8000-9000"]`.
fn port_list(field: &str, v: &Value) -> Result<Vec<crate::settings::PortRange>, ConfigError> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(invalid(field, format!("expected ports, found {other}"))),
            })
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        other => return Err(invalid(field, format!("expected ports, found {other}"))),
    };
    parse_list(&text, parse_port_range).map_err(|why| invalid(field, why))
}

fn wrong(field: &'static str, expected: &'static str, found: &Value) -> ConfigError {
    let mut shown = found.to_string();
    if shown.len() > 80 {
        shown = format!("{} ({})", type_name(found), shown.len());
    }
    ConfigError::WrongType {
        field,
        expected,
        found: shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> Result<PluginConfig, ConfigError> {
        PluginConfig::from_conf(v.as_object().unwrap())
    }

    #[test]
    fn empty_entry_gets_defaults() {
        assert_eq!(cfg(json!({})).unwrap(), PluginConfig::default());
    }

    #[test]
    fn fields_parse() {
        let c =
            cfg(json!({"excludeNamespaces": [], "logLevel": "debug", "iptablesBackend": "legacy"}))
                .unwrap();
        assert!(c.exclude_namespaces.is_empty());
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!(c.iptables_backend, BackendChoice::Legacy);
        let c = cfg(json!({
            "profiles": ["linkerd", "istio", "linkerd"],
            "istio": {"proxyUid": 1000670000, "proxyGid": "1000670001", "dnsCapture": true},
            "linkerd": {"proxyUid": 2103, "skipInboundPorts": [25, "8000-8080"], "skipOutboundPorts": "4567,4568"}
        }))
        .unwrap();
        assert_eq!(c.profiles, [Profile::Linkerd, Profile::Istio]);
        assert_eq!(
            (c.istio.proxy_uid, c.istio.proxy_gid),
            (1000670000, 1000670001)
        );
        assert!(c.istio.dns_capture);
        assert_eq!(c.linkerd.proxy_uid, 2103);
        assert_eq!(c.linkerd.skip_inbound_ports.len(), 2);
        assert_eq!(c.linkerd.skip_outbound_ports.len(), 2);
    }

    #[test]
    fn wrong_values_name_the_field() {
        for v in [
            json!({"excludeNamespaces": "kube-system"}),
            json!({"excludeNamespaces": [1]}),
            json!({"logLevel": "loud"}),
            json!({"iptablesBackend": "ebpf"}),
            json!({"logSocket": "run/shunt/log.sock"}),
            json!({"defaults": {"outbound-port": "http"}}),
            json!({"profiles": ["istio", "consul"]}),
            json!({"profiles": "istio"}),
            json!({"istio": {"proxyUid": "istio-proxy"}}),
            json!({"istio": {"dnsCapture": "yes"}}),
            json!({"istio": {"proxyUID": 1}}),
            json!({"linkerd": {"skipInboundPorts": "25,x"}}),
            json!({"linkerd": []}),
        ] {
            let e = cfg(v.clone()).unwrap_err().to_string();
            let key = v.as_object().unwrap().keys().next().unwrap().clone();
            assert!(e.contains(&key), "{e}");
        }
    }
}
