//! shunt: a CNI chained plugin that redirects a pod's TCP traffic to its sidecar proxy, with the
//! rules written into the pod's network namespace by the runtime's CNI call, so that no container
//! of the pod needs NET_ADMIN.
//!
//! The plugin path, in order: [`cni`] (what the runtime sent) → [`config`] (what the node asked
//! for) → [`profiles`] (the pod's annotations, in shunt's, Istio's or Linkerd's dialect, into
//! typed [`settings`]) → [`addrs`] (the pod's addresses) → [`plan`] (the rules, pure) → [`apply`]
//! (one `iptables-restore` per family inside the pod netns, via [`netns`], plus TPROXY's policy
//! routing from [`routing`]). [`saved`] reads back what is installed; [`error`] maps every
//! failure to a CNI error code; [`plugin`] ties the verbs together; [`cli`] shows plans and
//! netns state to people.

pub mod addrs;
pub mod apply;
pub mod cli;
pub mod cni;
pub mod config;
pub mod cri;
pub mod error;
pub mod install;
pub mod logging;
pub mod netns;
pub mod plan;
pub mod plugin;
pub mod profiles;
pub mod routing;
pub mod saved;
pub mod settings;
