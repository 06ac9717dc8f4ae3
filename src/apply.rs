//! Applying a plan: finding the node's iptables tools, and running one `iptables-restore` per
//! address family inside the pod netns.
//!
//! Each restore is one kernel transaction (legacy: the table is swapped whole; nf_tables: one
//! batch), so a family is either fully programmed or untouched. Across families, a failure rolls
//! back the family that did succeed, so ADD never leaves half a pod's rules behind. TPROXY's
//! policy routing ([`crate::routing`]) is added before a family's rules and removed with them.
//!
//! Legacy iptables serialises writers with a lock file, by default the host-wide
//! `/run/xtables.lock`, although tables are per netns. Every tool we run gets
//! `XTABLES_LOCKFILE=/proc/self/ns/net`: the flock then lands on the pod netns' own nsfs inode,
//! which serialises exactly the writers of that netns and no others. The tools also run with a
//! files-only name-service configuration (see [`shield_thread_from_nss`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::BackendChoice;
use crate::netns::{Netns, NetnsError};
use crate::plan::{render_create, Family, FamilyPlan, Plan};
use crate::routing::{self, RoutingError};
use crate::saved::{self, Drift, Owned};

/// Seconds a legacy tool waits for the (per-netns) lock before giving up.
const LOCK_WAIT_SECS: &str = "--wait=10";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
    /// Plain `iptables-restore`, whichever the distribution made it.
    Unsuffixed,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::Unsuffixed => "unsuffixed",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Unsuffixed => "",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("iptables tooling not found: {0}")]
    ToolsMissing(String),
    #[error("{family} rules could not be applied ({tool} failed: {stderr})")]
    Restore {
        family: &'static str,
        tool: String,
        stderr: String,
    },
    #[error("reading {family} rules ({tool} failed: {stderr})")]
    Save {
        family: &'static str,
        tool: String,
        stderr: String,
    },
    #[error("running {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("policy routing: {0}")]
    Routing(#[from] RoutingError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The node's iptables: a backend and the directory holding its tools.
#[derive(Debug, Clone)]
pub struct Iptables {
    pub backend: Backend,
    dir: PathBuf,
}

#[derive(Debug, Clone, Copy)]
enum Tool {
    Restore,
    Save,
}

/// Where the runtime's PATH may not reach: containerd often runs with a PATH lacking sbin.
const EXTRA_DIRS: [&str; 5] = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The directory holding `name`, from PATH and then [`EXTRA_DIRS`].
fn find_dir(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .find(|d| is_executable(&d.join(name)))
}

fn tool_name(backend: Backend, family: Family, tool: Tool) -> String {
    let cmd = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let verb = match tool {
        Tool::Restore => "restore",
        Tool::Save => "save",
    };
    format!("{cmd}{}-{verb}", backend.suffix())
}

impl Iptables {
    /// The backend's tools are installed side by side (links to one multi-call binary), so
    /// finding one locates all four: one search per call instead of four.
    fn locate(backend: Backend) -> Option<Iptables> {
        find_dir(&tool_name(backend, Family::V4, Tool::Restore))
            .map(|dir| Iptables { backend, dir })
    }

    fn path(&self, family: Family, tool: Tool) -> PathBuf {
        self.dir.join(tool_name(self.backend, family, tool))
    }

    /// Path of the family's `iptables-restore`.
    pub fn restore_path(&self, family: Family) -> PathBuf {
        self.path(family, Tool::Restore)
    }

    /// Checks that all four tools are there (STATUS; ADD finds out by running them).
    pub fn verify(&self) -> Result<(), ApplyError> {
        let missing: Vec<String> = [Family::V4, Family::V6]
            .into_iter()
            .flat_map(|f| [self.path(f, Tool::Restore), self.path(f, Tool::Save)])
            .filter(|p| !is_executable(p))
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::ToolsMissing(missing.join(", ")))
        }
    }
}

/// Whether the host netns already has legacy x_tables in use (kube-proxy or Docker in legacy
/// mode). Reading two proc files costs microseconds, unlike running `iptables-save` twice.
fn host_uses_legacy() -> bool {
    ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .any(|p| std::fs::read(p).is_ok_and(|b| !b.is_empty()))
}

impl Iptables {
    /// Finds the tools for `choice`. With `auto`, the pod follows the host: legacy if the host
    /// has legacy tables, else nf_tables, else whatever the unsuffixed tools are.
    pub fn resolve(choice: BackendChoice) -> Result<Iptables, ApplyError> {
        let order: &[Backend] = match choice {
            BackendChoice::Nft => &[Backend::Nft],
            BackendChoice::Legacy => &[Backend::Legacy],
            BackendChoice::Auto if host_uses_legacy() => {
                &[Backend::Legacy, Backend::Nft, Backend::Unsuffixed]
            }
            BackendChoice::Auto => &[Backend::Nft, Backend::Legacy, Backend::Unsuffixed],
        };
        if let Some(found) = order.iter().find_map(|&b| Iptables::locate(b)) {
            return Ok(found);
        }
        let names: Vec<String> = order
            .iter()
            .map(|b| format!("iptables{}-restore", b.suffix()))
            .collect();
        Err(ApplyError::ToolsMissing(format!(
            "none of {} in PATH or {}",
            names.join(", "),
            EXTRA_DIRS.join(":")
        )))
    }

    /// Every backend whose tools are installed. DEL looks in all of them: the backend that
    /// wrote a pod's rules may not be the one `auto` would pick today.
    pub fn present() -> Vec<Iptables> {
        let mut all: Vec<Iptables> = [Backend::Nft, Backend::Legacy]
            .into_iter()
            .filter_map(Iptables::locate)
            .collect();
        if all.is_empty() {
            all.extend(Iptables::locate(Backend::Unsuffixed));
        }
        all
    }

    /// Whether this backend can hold rules in the calling thread's netns. A legacy table shows
    /// up in `ip(6)_tables_names` once it exists, which spares a save where there is none;
    /// nf_tables gives no such cheap sign.
    fn may_hold_rules(&self, family: Family) -> bool {
        if self.backend != Backend::Legacy {
            return true;
        }
        let names = match family {
            Family::V4 => "/proc/thread-self/net/ip_tables_names",
            Family::V6 => "/proc/thread-self/net/ip6_tables_names",
        };
        std::fs::read(names).map_or(true, |b| !b.is_empty())
    }

    /// Runs `iptables-restore --noflush` with `input`. Call from inside the pod netns.
    pub fn restore(&self, family: Family, input: &str) -> Result<(), ApplyError> {
        let tool = &self.path(family, Tool::Restore);
        let out = run(tool, &["--noflush", LOCK_WAIT_SECS], Some(input))?;
        if out.status.success() {
            return Ok(());
        }
        Err(ApplyError::Restore {
            family: family.name(),
            tool: tool.display().to_string(),
            stderr: stderr_text(&out.stderr),
        })
    }

    /// Reads shunt's part of the family's rules. Call from inside the pod netns.
    pub fn owned(&self, family: Family) -> Result<Owned, ApplyError> {
        let tool = &self.path(family, Tool::Save);
        let out = run(tool, &[], None)?;
        if !out.status.success() {
            return Err(ApplyError::Save {
                family: family.name(),
                tool: tool.display().to_string(),
                stderr: stderr_text(&out.stderr),
            });
        }
        Ok(saved::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Removes whatever shunt owns in the family. Call from inside the pod netns.
    pub fn remove(&self, family: Family) -> Result<bool, ApplyError> {
        match saved::render_removal(&self.owned(family)?) {
            None => Ok(false),
            Some(text) => self.restore(family, &text).map(|()| true),
        }
    }

    /// Programs one family. The create-only restore fails when shunt's chains exist (ADD
    /// repeated, or a leftover); then the old rules are removed and the plan applied again, so
    /// the netns ends with exactly one copy. The common case costs a single restore.
    fn install_family(&self, fp: &FamilyPlan) -> Result<(), ApplyError> {
        if let Some(r) = fp.route {
            routing::install(&[(fp.family, r)])?;
        }
        let text = render_create(fp);
        match self.restore(fp.family, &text) {
            Ok(()) => Ok(()),
            Err(first) => {
                log::debug!(
                    "first {} restore failed ({first}); replacing existing rules",
                    fp.family.name()
                );
                if !self.remove(fp.family)? {
                    // Nothing of ours was there: the failure was real.
                    return Err(first);
                }
                self.restore(fp.family, &text)
            }
        }
    }
}

fn stderr_text(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim();
    if s.is_empty() {
        "no message".into()
    } else {
        s.lines().collect::<Vec<_>>().join("; ")
    }
}

fn run(
    tool: &Path,
    args: &[&str],
    input: Option<&str>,
) -> Result<std::process::Output, ApplyError> {
    let spawn_err = |source| ApplyError::Spawn {
        tool: tool.display().to_string(),
        source,
    };
    shield_thread_from_nss();
    let mut child = Command::new(tool)
        .args(args)
        .env("XTABLES_LOCKFILE", "/proc/self/ns/net")
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if input.is_some() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A broken pipe means the tool exited early; its status and stderr say why.
        let _ = stdin.write_all(text.as_bytes());
    }
    child.wait_with_output().map_err(spawn_err)
}

/// The name-service configuration the iptables tools see: local files only.
const NSSWITCH: &str = "/run/shunt/nsswitch.conf";
const NSSWITCH_TEXT: &str =
    "# Written by shunt: what its iptables tools see instead of /etc/nsswitch.conf.\n\
passwd: files\ngroup: files\n";

/// Makes sure [`NSSWITCH`] exists; `None` if it cannot be written.
fn nsswitch_file() -> Option<&'static str> {
    use std::sync::OnceLock;
    static READY: OnceLock<bool> = OnceLock::new();
    let ready = *READY.get_or_init(|| {
        if std::fs::read(NSSWITCH).is_ok_and(|b| b == NSSWITCH_TEXT.as_bytes()) {
            return true;
        }
        let tmp = format!("{NSSWITCH}.{}", std::process::id());
        let written = std::fs::create_dir_all("/run/shunt")
            .and_then(|()| std::fs::write(&tmp, NSSWITCH_TEXT))
            .and_then(|()| std::fs::rename(&tmp, NSSWITCH));
        if let Err(e) = &written {
            let _ = std::fs::remove_file(&tmp);
            log::warn!("cannot write {NSSWITCH} ({e}); iptables tools will use the host's NSS");
        }
        written.is_ok()
    });
    ready.then_some(NSSWITCH)
}

/// `iptables`' owner match calls `getpwnam()` on the `--uid-owner` value before reading it as a
/// number, so each restore asks the host's NSS for a user named "1337". With network sources
/// (LDAP, sssd, GCE OS Login) that lookup, made for a pod that cannot reach anything yet, can
/// stall for tens of seconds. So the thread that spawns the tools moves, once, into a mount
/// namespace of its own (a slave of the host's, so nothing propagates back) in which
/// /etc/nsswitch.conf lists local files only; the tools inherit it. Doing it on the thread
/// rather than in each child keeps the cheap posix_spawn path. Best effort: where a security
/// module forbids it, the tools use the host's name services as before.
fn shield_thread_from_nss() {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    use std::cell::Cell;
    thread_local!(static DONE: Cell<bool> = const { Cell::new(false) });
    if DONE.get() {
        return;
    }
    DONE.set(true);
    let Some(src) = nsswitch_file() else {
        return;
    };
    let none = None::<&str>;
    let shielded = unshare(CloneFlags::CLONE_NEWNS)
        .and_then(|()| mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none))
        .and_then(|()| {
            mount(
                Some(src),
                "/etc/nsswitch.conf",
                none,
                MsFlags::MS_BIND,
                none,
            )
        });
    if let Err(e) = shielded {
        log::debug!("iptables tools keep the host's name services: {e}");
    }
}

/// Installs the plan in the netns, all families at once. On any failure the families that were
/// programmed are removed again before the error is returned.
pub fn install(netns: &Netns, ipt: &Iptables, plan: &Plan) -> Result<(), ApplyError> {
    let families: Vec<&FamilyPlan> = plan.families.iter().collect();
    let results = netns.run_each(families.clone(), |fp| ipt.install_family(fp));
    let mut first_err = None;
    let mut done = Vec::new();
    for (fp, r) in families.iter().zip(results) {
        match r.map_err(ApplyError::from).and_then(|r| r) {
            Ok(()) => done.push(fp.family),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let Some(err) = first_err else {
        return Ok(());
    };
    if !done.is_empty() {
        for r in netns.run_each(done, |f| ipt.remove(f)) {
            if let Err(e) = r.map_err(ApplyError::from).and_then(|r| r.map(|_| ())) {
                log::error!("rolling back after a failed ADD: {e}");
            }
        }
    }
    if !plan.routes().is_empty() {
        let undone = netns
            .run(routing::remove_all)
            .map_err(ApplyError::from)
            .and_then(|r| r.map_err(ApplyError::from));
        if let Err(e) = undone {
            log::error!("rolling back policy routing after a failed ADD: {e}");
        }
    }
    Err(err)
}

/// Removes shunt's rules from every family, in every backend given. Returns how many
/// family/backend pairs had any.
pub fn remove_all(netns: &Netns, backends: &[Iptables]) -> Result<usize, ApplyError> {
    let results = netns.run_each(vec![Family::V4, Family::V6], |family| {
        let mut removed = 0;
        for ipt in backends.iter().filter(|i| i.may_hold_rules(family)) {
            removed += usize::from(ipt.remove(family)?);
        }
        Ok::<_, ApplyError>(removed)
    });
    let mut removed = 0;
    for r in results {
        removed += r??;
    }
    removed += netns.run(routing::remove_all)??;
    Ok(removed)
}

/// Compares every planned family with the netns.
pub fn check(
    netns: &Netns,
    ipt: &Iptables,
    plan: &Plan,
) -> Result<Vec<(Family, Drift)>, ApplyError> {
    let families: Vec<&FamilyPlan> = plan.families.iter().collect();
    let mut drift = Vec::new();
    for (fp, r) in families
        .iter()
        .zip(netns.run_each(families.clone(), |fp| ipt.owned(fp.family)))
    {
        drift.extend(saved::diff(fp, &r??).into_iter().map(|d| (fp.family, d)));
    }
    let have = netns.run(routing::list)??;
    for (family, d) in routing::diff(&plan.routes(), &have) {
        drift.push((family, Drift::Routing(d)));
    }
    Ok(drift)
}
