//! Pods that started before shunt was in the chain: found over CRI and given their rules.
//!
//! Each ready sandbox is put to the installed plugin exactly as the runtime would call it, with
//! its annotations, its netns and its addresses from the runtime: CHECK first (passes for pods
//! that did not ask, and for pods that have their rules), then ADD for those that fail it. The
//! plugin decides and applies; this pass only finds the pods and counts.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::health::Status;
use super::{Options, Repair};
use crate::cri::{self, Client, PodSandboxStatusResponse};

/// CHECK's code for "rules missing or different" (see `error.rs`).
const DRIFT: u64 = 102;

pub fn run(opts: &Options, entry: &Map<String, Value>, status: &Status) {
    if opts.repair == Repair::Off {
        return;
    }
    if !opts.cri_socket.exists() {
        log::info!(
            "no CRI socket at {}: skipping the check of pods that started before shunt",
            opts.cri_socket.display()
        );
        return;
    }
    let mut client = match Client::connect(&opts.cri_socket, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("{e}: skipping the check of pods that started before shunt");
            return;
        }
    };
    let sandboxes = match client.list_pod_sandbox(true) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("{e}: skipping the check of pods that started before shunt");
            return;
        }
    };
    // In a DaemonSet the host's file system is at `host_root`: the plugin runs chrooted there,
    // so that it finds the host's iptables and the same paths the runtime would give it.
    let plugin = opts.bin_dir.join(super::splice::PLUGIN_TYPE);
    let (root, plugin) = match &opts.host_root {
        Some(root) => match plugin.strip_prefix(root) {
            Ok(rel) => (Some(root.as_path()), Path::new("/").join(rel)),
            Err(_) => {
                log::warn!(
                    "{} is not under --host-root {}: skipping the check of pods that started before shunt",
                    plugin.display(),
                    root.display()
                );
                return;
            }
        },
        None => (None, plugin),
    };
    let mut checked = 0;
    for sandbox in sandboxes {
        let status_reply = match client.pod_sandbox_status(&sandbox.id, true) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("sandbox {}: {e}", sandbox.id);
                status.repair_failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let Some(pod) = PodCall::from_status(&sandbox.id, &status_reply, entry) else {
            // Host-network pods have no netns of their own and nothing to capture.
            continue;
        };
        checked += 1;
        match pod.invoke(root, &plugin, "CHECK") {
            Ok(()) => continue,
            Err((code, msg)) if code == DRIFT => {
                status.repair_missing.fetch_add(1, Ordering::Relaxed);
                if opts.repair == Repair::Report {
                    log::warn!(
                        "pod {} started without shunt's rules although it asks for them ({msg}); repair is report-only: restart the pod",
                        pod.name
                    );
                    continue;
                }
                match pod.invoke(root, &plugin, "ADD") {
                    Ok(()) => {
                        status.repair_programmed.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "pod {} had started without shunt's rules; programmed them now",
                            pod.name
                        );
                    }
                    Err((code, msg)) => {
                        status.repair_failed.fetch_add(1, Ordering::Relaxed);
                        log::error!(
                            "pod {} runs without shunt's rules and programming them failed (code {code}): {msg}",
                            pod.name
                        );
                    }
                }
            }
            Err((code, msg)) => {
                status.repair_failed.fetch_add(1, Ordering::Relaxed);
                log::error!("pod {}: CHECK failed (code {code}): {msg}", pod.name);
            }
        }
    }
    log::info!("checked {checked} running pods for shunt's rules");
}

/// One sandbox, as a CNI call of the plugin.
struct PodCall {
    name: String,
    container_id: String,
    netns: String,
    args: String,
    conf: Value,
}

impl PodCall {
    fn from_status(
        id: &str,
        reply: &PodSandboxStatusResponse,
        entry: &Map<String, Value>,
    ) -> Option<PodCall> {
        let status = reply.status.as_ref()?;
        let meta = status.metadata.clone().unwrap_or_default();
        let netns = cri::netns_path(reply)?;
        let network = status.network.clone().unwrap_or_default();
        let ips: Vec<Value> = std::iter::once(network.ip)
            .chain(network.additional_ips.into_iter().map(|p| p.ip))
            .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| {
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                json!({"address": format!("{ip}/{bits}")})
            })
            .collect();
        let mut conf = entry.clone();
        conf.insert("cniVersion".into(), json!("1.0.0"));
        conf.insert("name".into(), json!("shunt-repair"));
        conf.insert(
            "runtimeConfig".into(),
            json!({"io.kubernetes.cri.pod-annotations": status.annotations}),
        );
        conf.insert(
            "prevResult".into(),
            json!({"cniVersion": "1.0.0", "interfaces": [], "ips": ips}),
        );
        Some(PodCall {
            name: format!("{}/{}", meta.namespace, meta.name),
            container_id: id.to_owned(),
            netns: netns.to_string_lossy().into_owned(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={}",
                meta.namespace, meta.name, meta.uid
            ),
            conf: Value::Object(conf),
        })
    }

    /// Runs the plugin; on failure, its CNI error code and message.
    fn invoke(
        &self,
        root: Option<&Path>,
        plugin: &Path,
        command: &str,
    ) -> Result<(), (u64, String)> {
        let bin_dir = plugin.parent().unwrap_or(Path::new("/"));
        let mut cmd = Command::new(plugin);
        if let Some(root) = root {
            let root = root.to_path_buf();
            // SAFETY: between fork and exec only async-signal-safe calls: chroot and chdir.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    nix::unistd::chroot(&root)?;
                    nix::unistd::chdir("/")?;
                    Ok(())
                });
            }
        }
        let child = cmd
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", &self.args)
            .env("CNI_PATH", bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = child.map_err(|e| (0, format!("cannot run {}: {e}", plugin.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(self.conf.to_string().as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| (0, format!("waiting for {}: {e}", plugin.display())))?;
        if out.status.success() {
            return Ok(());
        }
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Err((
            reply["code"].as_u64().unwrap_or(0),
            reply["msg"]
                .as_str()
                .unwrap_or("no CNI error reply")
                .to_owned(),
        ))
    }
}
