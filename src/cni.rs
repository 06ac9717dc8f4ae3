//! The CNI protocol: environment, network configuration on stdin, versions, and what goes to stdout.
//!
//! Nothing here touches a network namespace; it turns the runtime's inputs into typed values and
//! typed errors, and renders results. Stdout belongs to the runtime: only [`render_result`],
//! [`render_version`] and [`render_error`] produce text meant for it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// Key under which containerd (≥1.5) and CRI-O (≥1.29) pass the pod's annotations in `runtimeConfig`.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Largest network configuration accepted on stdin. Kubernetes caps all of a pod's annotations at
/// 256 KiB; anything far beyond that is not a runtime talking to us.
pub const MAX_STDIN_BYTES: u64 = 4 << 20;

/// CNI spec versions this plugin speaks, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(s: &str) -> Option<CniVersion> {
        CniVersion::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// The first spec version that defines this verb.
    pub fn since(self) -> CniVersion {
        match self {
            Command::Add | Command::Del | Command::Version => CniVersion::V0_3_0,
            Command::Check => CniVersion::V0_4_0,
            Command::Status | Command::Gc => CniVersion::V1_1_0,
        }
    }

    fn needs_container(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        })
    }
}

/// Errors in what the runtime handed us, before any plugin logic runs.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("environment variable {name} is missing")]
    MissingEnv { name: &'static str },
    #[error("environment variable {name} has an invalid value {value:?}: {why}")]
    InvalidEnv {
        name: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("reading the network configuration from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("the network configuration on stdin is larger than {MAX_STDIN_BYTES} bytes")]
    StdinTooLarge,
    #[error("the network configuration on stdin is not valid JSON: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the network configuration on stdin is not a JSON object")]
    NotAnObject,
    #[error("field {field}: expected {expected}, found {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("field cniVersion is missing")]
    MissingVersion,
    #[error("cniVersion {0:?} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
    UnsupportedVersion(String),
    #[error("{command} is not defined for cniVersion {version} (needs {since} or later)")]
    CommandNotInVersion {
        command: Command,
        version: CniVersion,
        since: CniVersion,
    },
}

/// The pod identity Kubernetes runtimes put into `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

impl PodRef {
    /// Whether a Kubernetes runtime sent this call (it always names the pod's namespace).
    pub fn is_kubernetes(&self) -> bool {
        self.namespace.is_some()
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, "{ns}/{name}"),
            (Some(ns), None) => write!(f, "{ns}/?"),
            (None, Some(name)) => write!(f, "{name}"),
            (None, None) => f.write_str("(not a Kubernetes pod)"),
        }
    }
}

/// The `CNI_*` environment, validated for the command at hand.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `None` when the runtime passed an empty `CNI_NETNS` (allowed for DEL only).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub pod: PodRef,
}

impl Env {
    /// Reads the environment through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, ProtocolError> {
        let command = match get("CNI_COMMAND") {
            None => {
                return Err(ProtocolError::MissingEnv {
                    name: "CNI_COMMAND",
                })
            }
            Some(c) => Command::parse(&c).ok_or(ProtocolError::InvalidEnv {
                name: "CNI_COMMAND",
                value: c,
                why: "expected one of ADD, DEL, CHECK, VERSION, STATUS, GC",
            })?,
        };
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            pod: PodRef::default(),
        };
        if !command.needs_container() {
            return Ok(env);
        }
        env.container_id = non_empty(&get, "CNI_CONTAINERID")?;
        env.ifname = non_empty(&get, "CNI_IFNAME")?;
        env.netns = match get("CNI_NETNS").filter(|s| !s.is_empty()) {
            Some(p) if !p.starts_with('/') => {
                return Err(ProtocolError::InvalidEnv {
                    name: "CNI_NETNS",
                    value: p,
                    why: "not an absolute path",
                })
            }
            Some(p) => Some(PathBuf::from(p)),
            // The runtime's second DEL (RemovePodSandbox) comes after the netns is gone.
            None if command == Command::Del => None,
            None => return Err(ProtocolError::MissingEnv { name: "CNI_NETNS" }),
        };
        env.pod = parse_cni_args(get("CNI_ARGS").as_deref().unwrap_or(""))?;
        Ok(env)
    }
}

fn non_empty(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<String, ProtocolError> {
    match get(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ProtocolError::MissingEnv { name }),
    }
}

/// Parses `K=V;K=V` in any order. Only the `K8S_POD_*` keys are read; others are ignored, as
/// `IgnoreUnknown=1` asks.
pub fn parse_cni_args(raw: &str) -> Result<PodRef, ProtocolError> {
    let mut pod = PodRef::default();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(ProtocolError::InvalidEnv {
                name: "CNI_ARGS",
                value: raw.to_owned(),
                why: "every item must be KEY=VALUE",
            });
        };
        let slot = match key {
            "K8S_POD_NAMESPACE" => &mut pod.namespace,
            "K8S_POD_NAME" => &mut pod.name,
            "K8S_POD_UID" => &mut pod.uid,
            _ => continue,
        };
        if !value.is_empty() {
            *slot = Some(value.to_owned());
        }
    }
    Ok(pod)
}

/// The parts of the network configuration shunt reads. Plugin-specific keys stay in `raw` for
/// [`crate::config`] to interpret.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub raw: Map<String, Value>,
    pub prev_result: Option<Map<String, Value>>,
    /// `None`: the runtime did not pass the annotations capability at all.
    /// `Some(empty)`: it did, and the pod has no annotations (containerd sends `null` then).
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Reads stdin as a JSON object, refusing anything larger than [`MAX_STDIN_BYTES`].
pub fn read_stdin(input: impl std::io::Read) -> Result<Vec<u8>, ProtocolError> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(4096);
    input
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(ProtocolError::Stdin)?;
    if buf.len() as u64 > MAX_STDIN_BYTES {
        return Err(ProtocolError::StdinTooLarge);
    }
    Ok(buf)
}

fn decode_object(bytes: &[u8]) -> Result<Map<String, Value>, ProtocolError> {
    match serde_json::from_slice::<Value>(bytes).map_err(ProtocolError::Decode)? {
        Value::Object(map) => Ok(map),
        _ => Err(ProtocolError::NotAnObject),
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, expected: &'static str, found: &Value) -> ProtocolError {
    ProtocolError::WrongType {
        field: field.to_owned(),
        expected,
        found: type_name(found),
    }
}

fn parse_version(raw: &Map<String, Value>) -> Result<CniVersion, ProtocolError> {
    match raw.get("cniVersion") {
        None => Err(ProtocolError::MissingVersion),
        Some(Value::String(s)) => {
            CniVersion::parse(s).ok_or_else(|| ProtocolError::UnsupportedVersion(s.clone()))
        }
        Some(other) => Err(wrong_type("cniVersion", "a string", other)),
    }
}

impl NetConf {
    /// Decodes the configuration of ADD, DEL, CHECK, STATUS and GC.
    pub fn parse(bytes: &[u8], command: Command) -> Result<NetConf, ProtocolError> {
        let mut raw = decode_object(bytes)?;
        let cni_version = parse_version(&raw)?;
        if cni_version < command.since() {
            return Err(ProtocolError::CommandNotInVersion {
                command,
                version: cni_version,
                since: command.since(),
            });
        }
        let prev_result = match raw.remove("prevResult") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => return Err(wrong_type("prevResult", "an object", &other)),
        };
        let annotations = match raw.get("runtimeConfig") {
            None | Some(Value::Null) => None,
            Some(Value::Object(rc)) => match rc.get(POD_ANNOTATIONS_CAPABILITY) {
                None => None,
                Some(Value::Null) => Some(BTreeMap::new()),
                Some(Value::Object(m)) => {
                    let mut out = BTreeMap::new();
                    for (k, v) in m {
                        let Value::String(s) = v else {
                            return Err(wrong_type(
                                &format!("runtimeConfig.{POD_ANNOTATIONS_CAPABILITY}.{k}"),
                                "a string",
                                v,
                            ));
                        };
                        out.insert(k.clone(), s.clone());
                    }
                    Some(out)
                }
                Some(other) => {
                    return Err(wrong_type(
                        &format!("runtimeConfig.{POD_ANNOTATIONS_CAPABILITY}"),
                        "an object of strings",
                        other,
                    ))
                }
            },
            Some(other) => return Err(wrong_type("runtimeConfig", "an object", other)),
        };
        Ok(NetConf {
            cni_version,
            raw,
            prev_result,
            annotations,
        })
    }
}

/// The version VERSION should answer at: the one on stdin, or the latest when stdin is empty.
pub fn version_request(bytes: &[u8]) -> Result<CniVersion, ProtocolError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(CniVersion::LATEST);
    }
    parse_version(&decode_object(bytes)?)
}

/// The answer to VERSION.
pub fn render_version(version: CniVersion) -> String {
    let supported: Vec<Value> = CniVersion::ALL
        .iter()
        .map(|v| Value::String(v.as_str().to_owned()))
        .collect();
    let mut out = Map::new();
    out.insert("cniVersion".into(), version.as_str().into());
    out.insert("supportedVersions".into(), Value::Array(supported));
    Value::Object(out).to_string()
}

/// The result of a chained ADD: the previous result, unchanged but for its `cniVersion`, which
/// the spec says must be the version of the request.
pub fn render_result(version: CniVersion, prev_result: &Map<String, Value>) -> String {
    let mut out = prev_result.clone();
    match out.get_mut("cniVersion") {
        Some(v) => *v = version.as_str().into(),
        None => {
            out.insert("cniVersion".into(), version.as_str().into());
        }
    }
    Value::Object(out).to_string()
}

/// A CNI error as the spec lays it out.
pub fn render_error(version: CniVersion, code: u32, msg: &str, details: &str) -> String {
    let mut out = Map::new();
    out.insert("cniVersion".into(), version.as_str().into());
    out.insert("code".into(), code.into());
    out.insert("msg".into(), msg.into());
    if !details.is_empty() {
        out.insert("details".into(), details.into());
    }
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> Result<Env, ProtocolError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn cni_args_in_any_order() {
        let a = parse_cni_args(
            "K8S_POD_UID=u;IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop;K8S_POD_INFRA_CONTAINER_ID=x",
        )
        .unwrap();
        assert_eq!(a.namespace.as_deref(), Some("shop"));
        assert_eq!(a.name.as_deref(), Some("web"));
        assert_eq!(a.uid.as_deref(), Some("u"));
        assert!(parse_cni_args("K8S_POD_NAME").is_err());
        assert_eq!(parse_cni_args("").unwrap(), PodRef::default());
    }

    #[test]
    fn del_without_netns_is_fine_add_is_not() {
        let base = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ];
        let mut del = base.to_vec();
        del.push(("CNI_COMMAND", "DEL"));
        assert!(env_of(&del).unwrap().netns.is_none());
        let mut add = base.to_vec();
        add.push(("CNI_COMMAND", "ADD"));
        assert!(matches!(
            env_of(&add),
            Err(ProtocolError::MissingEnv { name: "CNI_NETNS" })
        ));
    }

    #[test]
    fn version_only_needs_command() {
        assert_eq!(
            env_of(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        assert!(env_of(&[("CNI_COMMAND", "add")]).is_err());
    }

    #[test]
    fn null_annotations_mean_none_set() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","runtimeConfig":{"io.kubernetes.cri.pod-annotations":null}}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(c.annotations, Some(BTreeMap::new()));
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0"}"#, Command::Add).unwrap();
        assert_eq!(c.annotations, None);
    }

    #[test]
    fn check_needs_040() {
        assert!(matches!(
            NetConf::parse(br#"{"cniVersion":"0.3.1"}"#, Command::Check),
            Err(ProtocolError::CommandNotInVersion { .. })
        ));
    }

    #[test]
    fn result_keeps_keys_in_order_and_sets_version() {
        let prev: Map<String, Value> =
            serde_json::from_str(r#"{"interfaces":[],"ips":[],"cniVersion":"0.4.0"}"#).unwrap();
        assert_eq!(
            render_result(CniVersion::V1_0_0, &prev),
            r#"{"interfaces":[],"ips":[],"cniVersion":"1.0.0"}"#
        );
    }
}
