//! The plugin's own keys in its conflist entry: node-wide policy set by whoever installed shunt.

use log::LevelFilter;
use serde_json::{Map, Value};

use crate::cni::type_name;
use crate::settings::{Defaults, SettingsError};

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
    pub defaults: Defaults,
    /// Where `shunt-install` listens for the plugin's log lines (`logSocket`).
    pub log_socket: Option<std::path::PathBuf>,
}

impl Default for PluginConfig {
    fn default() -> PluginConfig {
        PluginConfig {
            exclude_namespaces: vec!["kube-system".into()],
            log_level: LevelFilter::Info,
            iptables_backend: BackendChoice::Auto,
            defaults: Defaults::default(),
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
        if let Some(v) = raw.get("logSocket") {
            match v.as_str() {
                Some(p) if p.starts_with('/') => cfg.log_socket = Some(p.into()),
                _ => return Err(wrong("logSocket", "an absolute path", v)),
            }
        }
        Ok(cfg)
    }
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
        ] {
            let e = cfg(v.clone()).unwrap_err().to_string();
            let key = v.as_object().unwrap().keys().next().unwrap().clone();
            assert!(e.contains(&key), "{e}");
        }
    }
}
