//! A small blocking client for the CRI `runtime.v1.RuntimeService`: the sandbox calls shunt's
//! installer and tests need, over the runtime's unix socket.
//!
//! The messages are written out by hand with `prost` derives (no protoc, no generated code) and
//! carry only the fields shunt reads or sets; protobuf skips the rest on decode. Field numbers
//! are those of kubernetes `cri-api` `pkg/apis/runtime/v1/api.proto` and must never change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};

/// containerd's default CRI socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot start the CRI client: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot connect to the CRI socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {method} failed: {message} ({code:?})")]
    Call {
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl CriError {
    /// The runtime's own message for a failed call (for RunPodSandbox: the CNI plugin's `msg`).
    pub fn message(&self) -> String {
        match self {
            CriError::Call { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    #[prost(string, tag = "1")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
    #[prost(string, tag = "2")]
    pub runtime_handler: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// The request of StopPodSandbox and RemovePodSandbox, which share their shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxIdRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodIp {
    #[prost(string, tag = "1")]
    pub ip: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxNetworkStatus {
    #[prost(string, tag = "1")]
    pub ip: String,
    #[prost(message, repeated, tag = "2")]
    pub additional_ips: Vec<PodIp>,
}

/// `PodSandboxState`: SANDBOX_READY = 0, SANDBOX_NOTREADY = 1.
pub const SANDBOX_READY: i32 = 0;

/// `NamespaceMode` NODE: the sandbox shares the host's namespace (hostNetwork pods).
pub const NAMESPACE_NODE: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceOption {
    #[prost(int32, tag = "1")]
    pub network: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Namespace {
    #[prost(message, optional, tag = "2")]
    pub options: Option<NamespaceOption>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxStatus {
    #[prost(message, optional, tag = "1")]
    pub namespaces: Option<Namespace>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(int32, tag = "3")]
    pub state: i32,
    #[prost(message, optional, tag = "5")]
    pub network: Option<PodSandboxNetworkStatus>,
    #[prost(message, optional, tag = "6")]
    pub linux: Option<LinuxPodSandboxStatus>,
    #[prost(map = "string, string", tag = "8")]
    pub annotations: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<PodSandboxStatus>,
    /// Runtime-specific JSON, filled only for verbose requests; see [`netns_path`].
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStateValue {
    #[prost(int32, tag = "1")]
    pub state: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxFilter {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub state: Option<PodSandboxStateValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<PodSandboxFilter>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(int32, tag = "3")]
    pub state: i32,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxResponse {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<PodSandbox>,
}

/// A connection to a runtime's CRI socket. Calls block the calling thread.
pub struct Client {
    rt: tokio::runtime::Runtime,
    grpc: tonic::client::Grpc<Channel>,
}

impl Client {
    /// Connects to `socket`; every call then fails after `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Client, CriError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        let path = socket.to_path_buf();
        let connect_err = |source| CriError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        // The URI is required by the HTTP/2 layer but never resolved: the connector below dials
        // the unix socket whatever it says.
        let endpoint = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = rt
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                })),
            )
            .map_err(connect_err)?;
        Ok(Client {
            rt,
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One unary call; `method` is the gRPC path, `/runtime.v1.RuntimeService/<Name>`.
    pub fn call<Req, Resp>(&mut self, method: &'static str, request: Req) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let grpc = &mut self.grpc;
        let fail = |status: tonic::Status| CriError::Call {
            method,
            code: status.code(),
            message: status.message().to_string(),
        };
        self.rt.block_on(async {
            grpc.ready().await.map_err(|e| CriError::Call {
                method,
                code: tonic::Code::Unavailable,
                message: e.to_string(),
            })?;
            let path = PathAndQuery::from_static(method);
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(tonic::Request::new(request), path, codec)
                .await
                .map(tonic::Response::into_inner)
                .map_err(fail)
        })
    }

    pub fn version(&mut self) -> Result<VersionResponse, CriError> {
        self.call(
            "/runtime.v1.RuntimeService/Version",
            VersionRequest {
                version: "v1".into(),
            },
        )
    }

    /// Creates and starts a sandbox; returns its ID.
    pub fn run_pod_sandbox(&mut self, config: PodSandboxConfig) -> Result<String, CriError> {
        let request = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let reply: RunPodSandboxResponse =
            self.call("/runtime.v1.RuntimeService/RunPodSandbox", request)?;
        Ok(reply.pod_sandbox_id)
    }

    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), CriError> {
        let request = SandboxIdRequest {
            pod_sandbox_id: id.into(),
        };
        let _: Empty = self.call("/runtime.v1.RuntimeService/StopPodSandbox", request)?;
        Ok(())
    }

    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), CriError> {
        let request = SandboxIdRequest {
            pod_sandbox_id: id.into(),
        };
        let _: Empty = self.call("/runtime.v1.RuntimeService/RemovePodSandbox", request)?;
        Ok(())
    }

    pub fn pod_sandbox_status(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> Result<PodSandboxStatusResponse, CriError> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose,
        };
        self.call("/runtime.v1.RuntimeService/PodSandboxStatus", request)
    }

    /// Every sandbox the runtime knows, or only the ready ones.
    pub fn list_pod_sandbox(&mut self, ready_only: bool) -> Result<Vec<PodSandbox>, CriError> {
        let filter = ready_only.then(|| PodSandboxFilter {
            id: String::new(),
            state: Some(PodSandboxStateValue {
                state: SANDBOX_READY,
            }),
        });
        let reply: ListPodSandboxResponse = self.call(
            "/runtime.v1.RuntimeService/ListPodSandbox",
            ListPodSandboxRequest { filter },
        )?;
        Ok(reply.items)
    }
}

/// The sandbox's network namespace, from a verbose PodSandboxStatus.
///
/// CRI has no field for it; containerd and CRI-O both put the sandbox's OCI runtime spec in the
/// verbose `info` JSON, whose network namespace entry holds the path. Falls back to the sandbox
/// process's `/proc/<pid>/ns/net`. None for host-network sandboxes: they have no netns of their
/// own.
pub fn netns_path(status: &PodSandboxStatusResponse) -> Option<PathBuf> {
    let host_network = status
        .status
        .as_ref()
        .and_then(|s| s.linux.as_ref())
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .is_some_and(|o| o.network == NAMESPACE_NODE);
    if host_network {
        return None;
    }
    let info: serde_json::Value = serde_json::from_str(status.info.get("info")?).ok()?;
    let from_spec = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|namespaces| {
            namespaces
                .iter()
                .find(|ns| ns["type"] == "network")
                .and_then(|ns| ns["path"].as_str())
                .filter(|path| !path.is_empty())
                .map(PathBuf::from)
        });
    from_spec.or_else(|| {
        info["pid"]
            .as_u64()
            .filter(|pid| *pid > 0)
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
    })
}
