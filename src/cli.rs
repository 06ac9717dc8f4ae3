//! `shunt plan` and `shunt inspect`: the planner and the netns state, shown to people.
//!
//! `plan` runs the same decision and planner as ADD on annotations given by hand, and touches no
//! netns. `inspect` reads what shunt owns in a pod's netns (every backend, both families, and
//! the policy routing) and, given the pod's annotations, compares it with the plan.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::apply::Iptables;
use crate::cni::PodRef;
use crate::config::PluginConfig;
use crate::netns::Netns;
use crate::plan::{plan, render_create, render_route, Family, Plan};
use crate::profiles::{self, Annotations};
use crate::settings::Decision;
use crate::{addrs, routing, saved};

pub const USAGE: &str = "\
usage:
  shunt plan    [POD] [--ip ADDR]...
  shunt inspect NETNS-PATH [POD]
  shunt --version

POD options (what the runtime would pass for the pod):
  -a, --annotation KEY=VALUE   one pod annotation (repeatable)
  -f, --annotations FILE       a JSON object of annotations, or a pod as `kubectl get pod -o json`
                               prints it (its metadata.annotations and namespace); - for stdin
  -n, --namespace NS           the pod's namespace (default: default)
  -c, --config FILE            shunt's conflist entry, or a whole conflist (default: built-in)
      --ip ADDR                a pod address to plan for (plan only; default: 10.244.0.10 and
                               fd00:10:244::10)

plan prints which profile matched, the settings and the exact rules, and touches nothing.
inspect prints shunt's rules and routes in the pod netns and, given the pod's annotations, the
differences from the plan (exit status 3 when there are any).";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    #[error("{0}")]
    Input(String),
    /// `inspect` found differences; the report is the text.
    #[error("{0}")]
    Drift(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Input(_) => 1,
            CliError::Drift(_) => 3,
        }
    }
}

fn input(e: impl std::fmt::Display) -> CliError {
    CliError::Input(e.to_string())
}

/// What the command line says about the pod.
#[derive(Default)]
struct Pod {
    annotations: Option<Annotations>,
    namespace: Option<String>,
    config: PluginConfig,
    ips: Vec<IpAddr>,
    netns: Option<PathBuf>,
}

fn parse_args(args: &[String], inspect: bool) -> Result<Pod, CliError> {
    let mut pod = Pod::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| CliError::Usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "-a" | "--annotation" => {
                let kv = value(arg)?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("{arg} {kv:?}: expected KEY=VALUE")))?;
                pod.annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k.to_owned(), v.to_owned());
            }
            "-f" | "--annotations" => {
                let text = read(&value(arg)?)?;
                let (annotations, ns) = annotations_from_json(&text)?;
                pod.annotations
                    .get_or_insert_with(BTreeMap::new)
                    .extend(annotations);
                if pod.namespace.is_none() {
                    pod.namespace = ns;
                }
            }
            "-n" | "--namespace" => pod.namespace = Some(value(arg)?),
            "-c" | "--config" => pod.config = config_from_json(&read(&value(arg)?)?)?,
            "--ip" if !inspect => {
                let v = value(arg)?;
                pod.ips.push(
                    v.parse()
                        .map_err(|_| CliError::Usage(format!("--ip {v:?}: not an IP address")))?,
                );
            }
            other if inspect && pod.netns.is_none() && !other.starts_with('-') => {
                pod.netns = Some(PathBuf::from(other));
            }
            other => return Err(CliError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(pod)
}

fn read(path: &str) -> Result<String, CliError> {
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(input)?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| CliError::Input(format!("{path}: {e}")))
}

/// A JSON object of annotations, or a pod object holding them under metadata.
fn annotations_from_json(text: &str) -> Result<(Annotations, Option<String>), CliError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| CliError::Input(format!("annotations: not JSON: {e}")))?;
    let (obj, ns) = match v.get("metadata") {
        Some(meta) => (
            meta.get("annotations").cloned().unwrap_or(Value::Null),
            meta.get("namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        None => (v, None),
    };
    let map = match obj {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        _ => {
            return Err(CliError::Input(
                "annotations: expected a JSON object".into(),
            ))
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let Value::String(s) = v else {
            return Err(CliError::Input(format!(
                "annotations: {k:?} is not a string (annotation values always are)"
            )));
        };
        out.insert(k, s);
    }
    Ok((out, ns))
}

/// shunt's entry of a conflist, or the entry itself.
fn config_from_json(text: &str) -> Result<PluginConfig, CliError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| CliError::Input(format!("config: not JSON: {e}")))?;
    let entry = match v.get("plugins").and_then(Value::as_array) {
        Some(plugins) => plugins
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("shunt"))
            .ok_or_else(|| CliError::Input("config: the conflist has no shunt entry".into()))?,
        None => &v,
    };
    let map = entry
        .as_object()
        .ok_or_else(|| CliError::Input("config: expected a JSON object".into()))?;
    PluginConfig::from_conf(map).map_err(input)
}

impl Pod {
    fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: Some(self.namespace.clone().unwrap_or_else(|| "default".into())),
            name: Some("pod".into()),
            uid: None,
        }
    }

    /// The decision, with a header saying what was decided and why.
    fn decide(&self, out: &mut String) -> Result<Option<Box<crate::settings::Settings>>, CliError> {
        let empty = Annotations::new();
        let a = self.annotations.as_ref().unwrap_or(&empty);
        match profiles::decide(&self.pod_ref(), Some(a), &self.config).map_err(input)? {
            Decision::PassThrough(why) => {
                let _ = writeln!(out, "# not captured: {why}");
                Ok(None)
            }
            Decision::Redirect { profile, settings } => {
                let _ = writeln!(out, "# profile: {profile}");
                let _ = writeln!(out, "# settings:");
                for line in settings.to_string().lines() {
                    let _ = writeln!(out, "#   {line}");
                }
                Ok(Some(settings))
            }
        }
    }
}

/// Appends the plan as `iptables-restore` input per family, and its policy routing.
pub fn render_plan(p: &Plan, out: &mut String) {
    for fp in &p.families {
        let _ = writeln!(out, "\n# {} ({} rules)", fp.family.name(), fp.rule_count());
        out.push_str(&render_create(fp));
        if let Some(route) = render_route(fp) {
            let _ = writeln!(out, "# {} policy routing", fp.family.name());
            for line in route.lines() {
                let _ = writeln!(out, "# {line}");
            }
        }
    }
}

/// `shunt plan`.
pub fn plan_command(args: &[String]) -> Result<String, CliError> {
    let mut pod = parse_args(args, false)?;
    if pod.ips.is_empty() {
        pod.ips = vec![
            "10.244.0.10".parse().map_err(input)?,
            "fd00:10:244::10".parse().map_err(input)?,
        ];
    }
    let mut out = String::new();
    if let Some(settings) = pod.decide(&mut out)? {
        let shown: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "# pod addresses: {}", shown.join(", "));
        render_plan(&plan(&settings, &pod.ips), &mut out);
    }
    Ok(out)
}

/// `shunt inspect`.
pub fn inspect_command(args: &[String]) -> Result<String, CliError> {
    let pod = parse_args(args, true)?;
    let path = pod
        .netns
        .clone()
        .ok_or_else(|| CliError::Usage("inspect needs the pod's netns path".into()))?;
    let netns = Netns::open(&path).map_err(input)?;
    let mut out = String::new();
    let _ = writeln!(out, "# netns {}", path.display());

    let backends = Iptables::present();
    if backends.is_empty() {
        return Err(CliError::Input(
            "no iptables tools found on this host".into(),
        ));
    }
    let mut found: Vec<(Iptables, Family, saved::Owned)> = Vec::new();
    for ipt in &backends {
        for family in [Family::V4, Family::V6] {
            let owned = netns
                .run(|| ipt.owned(family))
                .map_err(input)?
                .map_err(input)?;
            if owned.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n# {} iptables-{}", family.name(), ipt.backend.name());
            for t in &owned.tables {
                let _ = writeln!(out, "*{}", t.table);
                for c in &t.chains {
                    let _ = writeln!(out, ":{c}");
                }
                for line in t.hooks.iter().chain(&t.rules) {
                    let _ = writeln!(out, "{line}");
                }
            }
            found.push((ipt.clone(), family, owned));
        }
    }
    let routes = netns.run(routing::list).map_err(input)?.map_err(input)?;
    if !routes.is_empty() {
        let _ = writeln!(out, "\n# policy routing");
        for r in &routes {
            let _ = writeln!(out, "{r}");
        }
    }
    if found.is_empty() && routes.is_empty() {
        let _ = writeln!(out, "\n# shunt owns nothing in this netns");
    }
    if pod.annotations.is_none() {
        return Ok(out);
    }

    let _ = writeln!(out);
    let Some(settings) = pod.decide(&mut out)? else {
        if found.is_empty() && routes.is_empty() {
            return Ok(out);
        }
        let _ = writeln!(out, "# differences: the pod should have none of the above");
        return Err(CliError::Drift(out));
    };
    let ips = netns
        .run(addrs::from_current_netns)
        .map_err(input)?
        .map_err(input)?;
    let p = plan(&settings, &ips);
    let mut drift = Vec::new();
    for fp in &p.families {
        let in_backend: Vec<&saved::Owned> = found
            .iter()
            .filter(|(_, f, _)| *f == fp.family)
            .map(|(_, _, o)| o)
            .collect();
        match in_backend.as_slice() {
            [] => drift.push(format!("{}: shunt's rules are missing", fp.family.name())),
            [one] => drift.extend(
                saved::diff(fp, one)
                    .into_iter()
                    .map(|d| format!("{}: {d}", fp.family.name())),
            ),
            _ => drift.push(format!(
                "{}: rules present in more than one iptables backend",
                fp.family.name()
            )),
        }
    }
    for (_, family, _) in &found {
        if p.family(*family).is_none() {
            drift.push(format!(
                "{}: rules for a family the pod has no address in",
                family.name()
            ));
        }
    }
    drift.extend(
        routing::diff(&p.routes(), &routes)
            .into_iter()
            .map(|(f, d)| format!("{}: {d}", f.name())),
    );
    if drift.is_empty() {
        let _ = writeln!(out, "# in sync with the plan ({} rules)", p.rule_count());
        return Ok(out);
    }
    let _ = writeln!(out, "# differences from the plan:");
    for d in drift {
        let _ = writeln!(out, "#   {d}");
    }
    Err(CliError::Drift(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plan_shows_profile_settings_and_rules() {
        let out = plan_command(&args(&[
            "-a",
            "sidecar.istio.io/status={}",
            "-a",
            "sidecar.istio.io/interceptionMode=TPROXY",
            "--ip",
            "10.1.2.3",
        ]))
        .unwrap();
        assert!(out.contains("# profile: istio"), "{out}");
        assert!(out.contains("#   interception:           TPROXY"), "{out}");
        assert!(
            out.contains("-A SHUNT_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY"),
            "{out}"
        );
        assert!(
            out.contains("# ip -4 rule add fwmark 0x539 lookup 133"),
            "{out}"
        );
        assert!(!out.contains("IPv6"), "{out}");
    }

    #[test]
    fn plan_reads_a_pod_and_a_conflist() {
        let dir = std::env::temp_dir().join(format!("shunt-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pod = dir.join("pod.json");
        std::fs::write(
            &pod,
            r#"{"metadata":{"namespace":"kube-system","annotations":{"shunt.dev/redirect":"enabled"}}}"#,
        )
        .unwrap();
        let conf = dir.join("conf.json");
        std::fs::write(
            &conf,
            r#"{"plugins":[{"type":"bridge"},{"type":"shunt","excludeNamespaces":[]}]}"#,
        )
        .unwrap();
        let f = pod.to_string_lossy().into_owned();
        let out = plan_command(&args(&["-f", &f])).unwrap();
        assert!(
            out.contains("not captured: namespace kube-system is excluded"),
            "{out}"
        );
        let c = conf.to_string_lossy().into_owned();
        let out = plan_command(&args(&["-f", &f, "-c", &c])).unwrap();
        assert!(out.contains("# profile: shunt"), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_named() {
        let e = plan_command(&args(&[
            "-a",
            "linkerd.io/proxy-version=1",
            "-a",
            "config.linkerd.io/skip-subnets=10.0.0.0/99",
        ]))
        .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string().contains("config.linkerd.io/skip-subnets"),
            "{e}"
        );
        assert_eq!(
            plan_command(&args(&["--bogus"])).unwrap_err().exit_code(),
            2
        );
        assert_eq!(
            plan_command(&args(&["-a", "novalue"]))
                .unwrap_err()
                .exit_code(),
            2
        );
    }
}
