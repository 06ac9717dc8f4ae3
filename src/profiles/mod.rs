//! Profiles: the annotation dialects a pod can ask for capture in — shunt's own, Istio's and
//! Linkerd's — each turned into the same typed [`Settings`].
//!
//! The node's conflist entry lists the profiles in use (`profiles`, default all three). They are
//! asked in that order; the first one that recognises the pod decides, including deciding to
//! leave it alone (`shunt.dev/redirect: disabled`, `sidecar.istio.io/inject: "false"`), so a
//! pod is never captured twice or by a dialect it did not write.

pub mod istio;
pub mod linkerd;
pub mod shunt;

use std::collections::BTreeMap;

use crate::cni::PodRef;
use crate::config::PluginConfig;
use crate::settings::{Decision, Settings, SettingsError};

pub type Annotations = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Shunt,
    Istio,
    Linkerd,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Shunt, Profile::Istio, Profile::Linkerd];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Shunt => "shunt",
            Profile::Istio => "istio",
            Profile::Linkerd => "linkerd",
        }
    }

    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The annotation by which this profile recognises its pods.
    pub fn marker(self) -> &'static str {
        match self {
            Profile::Shunt => shunt::REDIRECT,
            Profile::Istio => istio::STATUS,
            Profile::Linkerd => linkerd::PROXY_VERSION,
        }
    }

    fn examine(self, a: &Annotations, cfg: &PluginConfig) -> Result<Verdict, SettingsError> {
        match self {
            Profile::Shunt => shunt::examine(a, &cfg.defaults),
            Profile::Istio => istio::examine(a, &cfg.istio),
            Profile::Linkerd => linkerd::examine(a, &cfg.linkerd),
        }
    }
}

/// What one profile makes of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not written in this profile's dialect: ask the next one.
    NotMine,
    /// This profile's pod, but it is not to be captured; the reason is for the log.
    PassThrough(String),
    Capture(Box<Settings>),
}

/// Decides for one pod. `annotations` is `None` when the runtime passed none at all.
pub fn decide(
    pod: &PodRef,
    annotations: Option<&Annotations>,
    cfg: &PluginConfig,
) -> Result<Decision, SettingsError> {
    if let Some(ns) = &pod.namespace {
        if cfg.exclude_namespaces.iter().any(|e| e == ns) {
            return Ok(Decision::PassThrough(format!("namespace {ns} is excluded")));
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
            "no annotations (not a Kubernetes pod)".into(),
        ));
    };
    for &profile in &cfg.profiles {
        match profile.examine(annotations, cfg)? {
            Verdict::NotMine => {}
            Verdict::PassThrough(why) => {
                return Ok(Decision::PassThrough(format!("{}: {why}", profile.name())))
            }
            Verdict::Capture(settings) => {
                return Ok(Decision::Redirect {
                    profile: profile.name(),
                    settings,
                })
            }
        }
    }
    let markers: Vec<&str> = cfg.profiles.iter().map(|p| p.marker()).collect();
    Ok(Decision::PassThrough(if markers.is_empty() {
        "no profile is enabled".into()
    } else {
        format!("none of {} is set", markers.join(", "))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str) -> PodRef {
        PodRef {
            namespace: Some(ns.into()),
            name: Some("web".into()),
            uid: None,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn first_profile_that_knows_the_pod_decides() {
        let both = map(&[(shunt::REDIRECT, "disabled"), (istio::STATUS, "{}")]);
        let cfg = PluginConfig::default();
        assert!(matches!(
            decide(&pod("shop"), Some(&both), &cfg).unwrap(),
            Decision::PassThrough(_)
        ));
        let cfg = PluginConfig {
            profiles: vec![Profile::Istio, Profile::Shunt],
            ..PluginConfig::default()
        };
        assert!(matches!(
            decide(&pod("shop"), Some(&both), &cfg).unwrap(),
            Decision::Redirect {
                profile: "istio",
                ..
            }
        ));
    }

    #[test]
    fn disabled_profiles_are_not_asked() {
        let cfg = PluginConfig {
            profiles: vec![Profile::Shunt],
            ..PluginConfig::default()
        };
        let a = map(&[(linkerd::PROXY_VERSION, "edge-25.1.1")]);
        let Decision::PassThrough(why) = decide(&pod("shop"), Some(&a), &cfg).unwrap() else {
            panic!()
        };
        assert!(why.contains("shunt.dev/redirect"), "{why}");
    }

    #[test]
    fn excluded_namespace_wins() {
        let a = map(&[(shunt::REDIRECT, "enabled")]);
        assert!(matches!(
            decide(&pod("kube-system"), Some(&a), &PluginConfig::default()).unwrap(),
            Decision::PassThrough(_)
        ));
    }

    #[test]
    fn kubernetes_pod_without_annotations_fails_closed() {
        let cfg = PluginConfig::default();
        assert!(matches!(
            decide(&pod("shop"), None, &cfg),
            Err(SettingsError::NoAnnotations { .. })
        ));
        assert!(matches!(
            decide(&PodRef::default(), None, &cfg).unwrap(),
            Decision::PassThrough(_)
        ));
    }
}
