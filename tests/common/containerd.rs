//! A private containerd for the end-to-end tests, the sandbox benchmark and the demo: its own
//! root, state, socket and CNI directories under one temp dir, a locally built sandbox image, and
//! a CNI chain of Debian's reference plugins (`bridge` + `host-local` → `portmap`) optionally
//! followed by shunt. Everything it starts is stopped by PID when it is dropped.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use shunt::cri::{self, Client, CriError, PodSandboxConfig, PodSandboxMetadata};

/// Where Debian's `containernetworking-plugins` puts the reference plugins.
const CNI_PLUGINS: &str = "/usr/lib/cni";
const IMAGE: &str = "localhost/shunt-test:1";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// What follows the primary plugin in the chain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Chain {
    /// `bridge` → `portmap`: the node as it is without shunt.
    Plain,
    /// `bridge` → `portmap` → `shunt`, spliced in by `shunt-install --once`.
    Shunt,
}

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub bridge: String,
    pub subnet: String,
    child: Option<Child>,
}

/// The built installer, found like [`super::shunt_bin`].
pub fn shunt_install_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_shunt-install") {
        return p.into();
    }
    Path::new(&super::shunt_bin()).with_file_name("shunt-install")
}

fn check(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

impl Containerd {
    /// Starts a containerd whose pods get the given chain. `tag` names its bridge and directory,
    /// so that several can run side by side.
    pub fn start(tag: &str, chain: Chain) -> Containerd {
        super::require_root();
        for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is missing: run `bash tests/deps.sh` (installs containerd and runc)"
            );
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Linux caps interface names at 15 bytes; the subnet is unique per instance.
        let slot = (std::process::id() as usize * 7 + n) % 200;
        let dir = std::env::temp_dir().join(format!("shunt-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["bin", "net.d", "logs"] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        let mut c = Containerd {
            socket: dir.join("containerd.sock"),
            bridge: format!("shunt{slot}"),
            subnet: format!("10.77.{slot}.0/24"),
            dir,
            child: None,
        };
        c.write_config();
        c.write_cni(chain);
        c.spawn();
        c.import_image();
        c
    }

    fn write_config(&self) {
        let d = self.dir.display();
        // restrict_oom_score_adj: the VM lacks CAP_SYS_RESOURCE, and runc fails when asked for a
        // negative oom_score_adj. The stream server and metrics would bind TCP ports; they are
        // moved to an ephemeral loopback port and off.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/bin"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#
        );
        fs::write(self.dir.join("config.toml"), config).expect("write config.toml");
    }

    /// The CNI bin dir holds the reference plugins and the shunt under test; the conf dir one
    /// conflist (containerd 1.6 reads only the first).
    fn write_cni(&self, chain: Chain) {
        let bin = self.dir.join("bin");
        for entry in fs::read_dir(CNI_PLUGINS).expect("the reference CNI plugins in /usr/lib/cni") {
            let entry = entry.expect("dirent");
            std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name())).expect("link");
        }
        // No gateway and no masquerading: the host's addresses, routes and iptables stay as they
        // are; pods reach each other across the bridge.
        let plugins = vec![
            json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet}]],
                    "dataDir": self.dir.join("ipam"),
                }
            }),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ];
        let conflist = json!({"cniVersion": "1.0.0", "name": "shunt-e2e", "plugins": plugins});
        fs::write(
            self.dir.join("net.d/10-shunt-e2e.conflist"),
            serde_json::to_string_pretty(&conflist).expect("json"),
        )
        .expect("write conflist");
        if chain == Chain::Shunt {
            // The way a node gets shunt: the real installer, run once against these dirs.
            let out = self
                .installer_command(&["--once", "--repair", "off"])
                .output();
            let out = out.expect("run shunt-install");
            assert!(
                out.status.success(),
                "shunt-install --once: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    /// `shunt-install` pointed at this containerd's CNI dirs, state and CRI socket.
    pub fn installer_command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(shunt_install_bin());
        cmd.arg("--cni-bin-dir")
            .arg(self.dir.join("bin"))
            .arg("--cni-conf-dir")
            .arg(self.dir.join("net.d"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--log-socket")
            .arg(self.dir.join("state/log.sock"))
            .arg("--cri-socket")
            .arg(&self.socket)
            .arg("--plugin-binary")
            .arg(super::shunt_bin())
            .args(["--health-addr", "off"])
            .args(extra)
            .stdin(Stdio::null());
        cmd
    }

    /// The conflist the runtime reads.
    pub fn conflist(&self) -> String {
        fs::read_to_string(self.dir.join("net.d/10-shunt-e2e.conflist")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs/containerd.log"))
            .expect("log file");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket.exists() {
                if let Ok(mut client) = Client::connect(&self.socket, Duration::from_secs(2)) {
                    if client.version().is_ok() {
                        return;
                    }
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not serve CRI within 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("logs/containerd.log")).unwrap_or_default()
    }

    fn import_image(&self) {
        let archive = self.dir.join("image.tar");
        check(
            Command::new("bash")
                .arg(repo_file("tests/e2e/image.sh"))
                .arg(&archive)
                .arg(IMAGE),
        );
        check(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&archive),
        );
    }

    /// Stops containerd (SIGTERM, then SIGKILL) and starts it again on the same state.
    pub fn restart(&mut self) {
        self.stop_daemon();
        self.spawn();
    }

    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket, Duration::from_secs(30)).expect("connect to CRI")
    }

    /// RunPodSandbox, the way the kubelet would call it, for a pod with these annotations.
    pub fn run_pod(
        &self,
        client: &mut Client,
        name: &str,
        namespace: &str,
        annotations: &[(&str, &str)],
    ) -> Result<Pod, CriError> {
        let uid = format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid,
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.dir.join("logs").to_string_lossy().into_owned(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        };
        let id = client.run_pod_sandbox(config.clone())?;
        Ok(self.pod(client, &id, config))
    }

    /// The sandbox's address and network namespace, as the runtime reports them.
    fn pod(&self, client: &mut Client, id: &str, config: PodSandboxConfig) -> Pod {
        let status = client
            .pod_sandbox_status(id, true)
            .expect("PodSandboxStatus");
        let netns = cri::netns_path(&status).expect("the sandbox's netns in its verbose status");
        let ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .expect("the sandbox's IP");
        Pod {
            id: id.to_owned(),
            netns,
            ip,
            config,
        }
    }

    /// Creates and starts a container of the test image in `pod`, running `/netcheck args…` as
    /// `uid` with every capability dropped: the way a restricted pod's containers run.
    pub fn start_container(
        &self,
        client: &mut Client,
        pod: &Pod,
        name: &str,
        uid: i64,
        args: &[&str],
    ) -> Container {
        let log_path = format!("{}-{name}.log", pod.id);
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
            }),
            command: vec!["/netcheck".into()],
            args: args.iter().map(|a| a.to_string()).collect(),
            log_path: log_path.clone(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: vec![],
                        drop_capabilities: vec!["ALL".into()],
                    }),
                    run_as_user: Some(Int64Value { value: uid }),
                    run_as_group: Some(Int64Value { value: uid }),
                    no_new_privs: true,
                }),
            }),
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let created: CreateContainerResponse = client
            .call("/runtime.v1.RuntimeService/CreateContainer", request)
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
        let _: cri::Empty = client
            .call(
                "/runtime.v1.RuntimeService/StartContainer",
                StartContainerRequest {
                    container_id: created.container_id.clone(),
                },
            )
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        Container {
            log: self.dir.join("logs").join(log_path),
        }
    }

    /// The pod addresses `host-local` has handed out and not yet taken back.
    pub fn allocated_ips(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(self.dir.join("ipam/shunt-e2e")) else {
            return Vec::new();
        };
        let mut ips: Vec<String> = dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
            .collect();
        ips.sort();
        ips
    }

    /// StopPodSandbox then RemovePodSandbox for every sandbox this containerd has.
    pub fn remove_all(&self) {
        let Ok(mut client) = Client::connect(&self.socket, Duration::from_secs(10)) else {
            return;
        };
        for sandbox in client.list_pod_sandbox(false).unwrap_or_default() {
            let _ = client.stop_pod_sandbox(&sandbox.id);
            let _ = client.remove_pod_sandbox(&sandbox.id);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all();
        }
        self.stop_daemon();
        // Shims outlive containerd by design; any still serving this instance's sandboxes
        // (a test that failed half-way) are found by the socket address they were given.
        kill_shims(&self.socket);
        detach_mounts_under(&self.dir);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn kill_shims(socket: &Path) {
    let needle = socket.to_string_lossy().into_owned();
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Lazily unmounts whatever is still mounted below `dir` (rootfs overlays, shm), deepest first,
/// so that removing the directory cannot reach into a container's filesystem.
fn detach_mounts_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut mounts: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A running sandbox.
pub struct Pod {
    pub id: String,
    pub netns: PathBuf,
    pub ip: String,
    config: PodSandboxConfig,
}

/// A started container; what it printed is in its CRI log file.
pub struct Container {
    pub log: PathBuf,
}

impl Container {
    /// The lines the container printed so far (CRI log format: `<time> <stream> <tag> <line>`).
    pub fn lines(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
            .collect()
    }

    /// Waits up to 30 s for a printed line containing `needle`.
    pub fn wait_for(&self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Some(line);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Pod {
    pub fn handle(&self) -> shunt::netns::Netns {
        shunt::netns::Netns::open(&self.netns).expect("open the sandbox netns")
    }

    /// Every rule line mentioning SHUNT in the sandbox netns, across backends and families.
    pub fn shunt_rules(&self) -> Vec<String> {
        shunt_rules_in(&self.netns)
    }
}

pub fn shunt_rules_in(netns: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for tool in super::SAVE_TOOLS {
        let out = check(
            Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .arg(tool),
        );
        lines.extend(
            out.lines()
                .filter(|l| l.contains("SHUNT"))
                .map(|l| format!("{tool}: {l}")),
        );
    }
    lines
}

// The container calls of CRI, which only the tests need: written out like those in `shunt::cri`,
// with the fields used here (numbers from cri-api `api.proto`).

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerMetadata {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint32, tag = "2")]
    attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ImageSpec {
    #[prost(string, tag = "1")]
    image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Capability {
    #[prost(string, repeated, tag = "1")]
    add_capabilities: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    drop_capabilities: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Int64Value {
    #[prost(int64, tag = "1")]
    value: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LinuxContainerSecurityContext {
    #[prost(message, optional, tag = "1")]
    capabilities: Option<Capability>,
    #[prost(message, optional, tag = "5")]
    run_as_user: Option<Int64Value>,
    #[prost(message, optional, tag = "12")]
    run_as_group: Option<Int64Value>,
    #[prost(bool, tag = "11")]
    no_new_privs: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LinuxContainerConfig {
    #[prost(message, optional, tag = "2")]
    security_context: Option<LinuxContainerSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerConfig {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    image: Option<ImageSpec>,
    #[prost(string, repeated, tag = "3")]
    command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    args: Vec<String>,
    #[prost(string, tag = "11")]
    log_path: String,
    #[prost(message, optional, tag = "15")]
    linux: Option<LinuxContainerConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    config: Option<ContainerConfig>,
    #[prost(message, optional, tag = "3")]
    sandbox_config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateContainerResponse {
    #[prost(string, tag = "1")]
    container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StartContainerRequest {
    #[prost(string, tag = "1")]
    container_id: String,
}
