//! `shunt-install`: puts shunt into a node's CNI chain, keeps it there, and takes it out.
//!
//! One loop owns the conf dir: on every inotify event (debounced) and every `resync` it makes
//! the world match the wish: binary in the bin dir, shunt's entry last in the primary config.
//! Splicing is pure ([`splice`]); the file system work is in [`confdir`]; [`health`] and
//! [`output`] are what the cluster sees; [`repair`] programs pods that started before shunt.

pub mod confdir;
pub mod health;
pub mod output;
pub mod repair;
pub mod splice;

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use serde_json::{json, Map, Value};

use confdir::{Found, Record};
use health::Status;
use splice::{Form, Primary};

/// Where a distribution keeps its CNI directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Default,
    K3s,
    Microk8s,
    Gke,
}

impl Preset {
    pub fn parse(s: &str) -> Option<Preset> {
        match s {
            "default" => Some(Preset::Default),
            "k3s" => Some(Preset::K3s),
            "microk8s" => Some(Preset::Microk8s),
            "gke" => Some(Preset::Gke),
            _ => None,
        }
    }

    /// (bin dir, conf dir).
    pub fn dirs(self) -> (&'static str, &'static str) {
        match self {
            Preset::Default => ("/opt/cni/bin", "/etc/cni/net.d"),
            Preset::K3s => (
                "/var/lib/rancher/k3s/data/cni",
                "/var/lib/rancher/k3s/agent/etc/cni/net.d",
            ),
            Preset::Microk8s => (
                "/var/snap/microk8s/current/opt/cni/bin",
                "/var/snap/microk8s/current/args/cni-network",
            ),
            Preset::Gke => ("/home/kubernetes/bin", "/etc/cni/net.d"),
        }
    }
}

/// How shunt is put into the node's CNI configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Appended to the primary conflist.
    Chained,
    /// A conflist of its own, named so (for Multus or OpenShift to attach as a network).
    Standalone(String),
}

/// What the repair pass does with a running pod that lacks the rules it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    Program,
    Report,
    Off,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The primary's file name, when the first loadable file is not it.
    pub primary: Option<String>,
    pub mode: Mode,
    /// The plugin binary to install.
    pub plugin_binary: PathBuf,
    pub state_dir: PathBuf,
    pub log_socket: Option<PathBuf>,
    pub health_addr: Option<String>,
    pub cri_socket: PathBuf,
    pub repair: Repair,
    /// Where the host's root file system is mounted, when the installer runs in a container.
    pub host_root: Option<PathBuf>,
    /// Leave entry and binary in place on exit (rolling upgrades).
    pub keep_on_exit: bool,
    /// The plugin's own keys for its entry (`excludeNamespaces`, `logLevel`, ...).
    pub plugin_config: Map<String, Value>,
    /// Full check even without events.
    pub resync: Duration,
}

/// This many splices within the window means another writer removes the entry as fast as it is
/// put back: a fight, which the installer leaves for a growing pause instead of a hot loop.
/// Slower rewrites (an operator, a primary CNI re-rendering its config now and then) are
/// answered at once, every time.
const FIGHT_WINDOW: Duration = Duration::from_secs(5);
const FIGHT_LIMIT: usize = 6;
/// Events arriving closer together than this are handled once, after the burst.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How long a primary that stopped parsing is taken to be mid-write by its owner, before the
/// next loadable file is considered the primary.
const MID_WRITE_GRACE: Duration = Duration::from_secs(5);

pub struct Installer {
    pub opts: Options,
    pub status: Arc<Status>,
    entry: Map<String, Value>,
    splice_times: VecDeque<Instant>,
    backoff: Duration,
    hold_until: Option<Instant>,
    /// The primary last seen healthy, and since when it stopped parsing (if it did).
    last_primary: Option<PathBuf>,
    broken_since: Option<Instant>,
    /// The installed binary as last verified (inode, size, mtime): a full comparison is only
    /// needed when that changes, or at a resync.
    binary_stamp: Option<(u64, u64, i64, i64)>,
}

impl Installer {
    pub fn new(opts: Options) -> Installer {
        let mut entry = Map::new();
        entry.insert("type".into(), json!(splice::PLUGIN_TYPE));
        entry.insert(
            "capabilities".into(),
            json!({"io.kubernetes.cri.pod-annotations": true}),
        );
        for (k, v) in &opts.plugin_config {
            entry.insert(k.clone(), v.clone());
        }
        if let Some(sock) = &opts.log_socket {
            entry.insert("logSocket".into(), json!(sock));
        }
        Installer {
            opts,
            status: Arc::new(Status::default()),
            entry,
            splice_times: VecDeque::new(),
            backoff: Duration::ZERO,
            hold_until: None,
            last_primary: None,
            broken_since: None,
            binary_stamp: None,
        }
    }

    pub fn entry(&self) -> &Map<String, Value> {
        &self.entry
    }

    fn binary_dest(&self) -> PathBuf {
        self.opts.bin_dir.join(splice::PLUGIN_TYPE)
    }

    fn stamp(&self) -> Option<(u64, u64, i64, i64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(self.binary_dest()).ok()?;
        Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    }

    /// Makes the node match the wish once. Returns whether everything is in place. `thorough`
    /// compares the binary's bytes even when its inode, size and mtime are as last verified.
    pub fn reconcile_with(&mut self, thorough: bool) -> bool {
        let unchanged =
            !thorough && self.binary_stamp.is_some() && self.binary_stamp == self.stamp();
        let installed = if unchanged {
            Ok(false)
        } else {
            confdir::install_binary(&self.opts.plugin_binary, &self.binary_dest())
        };
        let binary_ok = match installed {
            Ok(wrote) => {
                self.binary_stamp = self.stamp();
                if wrote {
                    self.status.binary_writes.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "installed the plugin binary at {}",
                        self.binary_dest().display()
                    );
                }
                true
            }
            Err(e) => {
                self.binary_stamp = None;
                log::error!(
                    "cannot install {} from {}: {e}",
                    self.binary_dest().display(),
                    self.opts.plugin_binary.display()
                );
                false
            }
        };
        let conf_ok = match &self.opts.mode {
            Mode::Chained => self.reconcile_chained(),
            Mode::Standalone(name) => {
                let name = name.clone();
                self.reconcile_standalone(&name)
            }
        };
        let ready = binary_ok && conf_ok;
        if ready != self.status.ready.swap(ready, Ordering::Relaxed) {
            log::info!("{}", if ready { "ready" } else { "not ready" });
        }
        ready
    }

    /// [`Installer::reconcile_with`], comparing the binary's bytes.
    pub fn reconcile(&mut self) -> bool {
        self.reconcile_with(true)
    }

    fn reconcile_standalone(&mut self, name: &str) -> bool {
        let path = self.opts.conf_dir.join(name);
        let list = json!({
            "cniVersion": "1.0.0",
            "name": "shunt",
            "plugins": [Value::Object(self.entry.clone())],
        });
        let bytes = splice::render(list.as_object().unwrap_or(&Map::new()));
        if std::fs::read(&path).is_ok_and(|have| have == bytes) {
            return true;
        }
        match confdir::write_atomic(&path, &bytes, 0o644) {
            Ok(()) => {
                self.status.splices.fetch_add(1, Ordering::Relaxed);
                log::info!("wrote {}", path.display());
                true
            }
            Err(e) => {
                log::error!("cannot write {}: {e}", path.display());
                false
            }
        }
    }

    fn reconcile_chained(&mut self) -> bool {
        if self.hold_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let dir = &self.opts.conf_dir;
        let (found, skipped) = match confdir::find_primary(dir, self.opts.primary.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot read {}: {e}", dir.display());
                return false;
            }
        };
        // The primary's owner may be rewriting it in place: give it time before another file is
        // taken for the primary.
        if let Some(last) = &self.last_primary {
            let still_there_but_broken = skipped.iter().any(|s| dir.join(&s.name) == *last);
            let moved_on = found.as_ref().is_some_and(|f| &f.path != last);
            if still_there_but_broken && (moved_on || found.is_none()) {
                let since = *self.broken_since.get_or_insert_with(Instant::now);
                if since.elapsed() < MID_WRITE_GRACE {
                    log::debug!("{} does not parse; waiting for its writer", last.display());
                    return false;
                }
            }
        }
        self.broken_since = None;
        for s in &skipped {
            log::debug!("skipping {}: {}", s.name, s.why);
        }
        let Some(found) = found else {
            log::info!(
                "no primary CNI configuration in {} yet; waiting for one",
                dir.display()
            );
            return false;
        };
        self.last_primary = Some(found.path.clone());
        if found.primary.is_spliced(&self.entry) {
            return true;
        }
        self.splice_into(found)
    }

    fn splice_into(&mut self, found: Found) -> bool {
        let now = Instant::now();
        self.splice_times
            .retain(|t| now.duration_since(*t) < FIGHT_WINDOW);
        if self.splice_times.len() >= FIGHT_LIMIT {
            self.backoff =
                (self.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
            self.hold_until = Some(now + self.backoff);
            self.status.backoffs.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{}: shunt's entry was removed {} times in {} s: another writer keeps rewriting this file (is the primary CNI configured to own it exclusively?); backing off {} s before splicing again",
                found.path.display(),
                self.splice_times.len(),
                FIGHT_WINDOW.as_secs(),
                self.backoff.as_secs()
            );
            self.splice_times.clear();
            return false;
        }
        if self.splice_times.is_empty() {
            self.backoff = Duration::ZERO;
        }
        let spliced = splice::splice(&found.primary.list, &self.entry);
        let bytes = splice::render(&spliced);
        let target = match found.primary.form {
            Form::List => found.path.clone(),
            Form::Single => found.path.with_extension("conflist"),
        };
        if found.primary.form == Form::Single && target.exists() {
            log::error!(
                "{} is a single-plugin config and {} exists already: not converting; name the primary explicitly",
                found.path.display(),
                target.display()
            );
            return false;
        }
        let mode = confdir::mode_of(&found.path, 0o644);
        // The original is what the primary held without shunt: kept for uninstall, unless this
        // file already carried a shunt entry (then the earlier record, if any, still holds it).
        let record = if found.primary.has_shunt() {
            Record::load(&self.opts.state_dir).filter(|r| r.spliced == target)
        } else {
            Some(Record {
                spliced: target.clone(),
                original_path: found.path.clone(),
                original: String::from_utf8_lossy(&found.bytes).into_owned(),
                written: String::new(),
            })
        };
        if let Err(e) = confdir::write_atomic(&target, &bytes, mode) {
            log::error!("cannot write {}: {e}", target.display());
            return false;
        }
        if target != found.path {
            // Only now that the list is in place: the runtime always had one of the two.
            if let Err(e) = std::fs::remove_file(&found.path) {
                log::warn!("cannot remove {}: {e}", found.path.display());
            }
        }
        match record {
            Some(mut r) => {
                r.written = String::from_utf8_lossy(&bytes).into_owned();
                if let Err(e) = r.save(&self.opts.state_dir) {
                    log::warn!("cannot save the install record: {e}");
                }
            }
            None => Record::clear(&self.opts.state_dir),
        }
        self.splice_times.push_back(now);
        self.status.splices.fetch_add(1, Ordering::Relaxed);
        self.last_primary = Some(target.clone());
        log::info!(
            "spliced shunt into {} (after {})",
            target.display(),
            plugin_types(&found.primary).join(", ")
        );
        true
    }

    /// Takes shunt out: the primary gets its original bytes back when nothing else changed it
    /// since, otherwise shunt's entry is removed from whatever it holds now; then the binary.
    pub fn uninstall(&mut self) {
        self.status.ready.store(false, Ordering::Relaxed);
        match &self.opts.mode {
            Mode::Standalone(name) => {
                let path = self.opts.conf_dir.join(name);
                remove_logged(&path);
            }
            Mode::Chained => self.unsplice_all(),
        }
        remove_logged(&self.binary_dest());
        Record::clear(&self.opts.state_dir);
    }

    fn unsplice_all(&mut self) {
        let record = Record::load(&self.opts.state_dir);
        if let Some(r) = &record {
            if std::fs::read(&r.spliced).is_ok_and(|b| b == r.written.as_bytes()) {
                let mode = confdir::mode_of(&r.spliced, 0o644);
                match confdir::write_atomic(&r.original_path, r.original.as_bytes(), mode) {
                    Ok(()) => {
                        if r.original_path != r.spliced {
                            remove_logged(&r.spliced);
                        }
                        log::info!("restored {} as it was", r.original_path.display());
                    }
                    Err(e) => log::error!("cannot restore {}: {e}", r.original_path.display()),
                }
            }
        }
        // Whatever still names shunt (changed since, or written before the record existed).
        let Ok(names) = confdir::candidates(&self.opts.conf_dir) else {
            return;
        };
        for (name, form) in names {
            let path = self.opts.conf_dir.join(&name);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(primary) = Primary::parse(form, &bytes) else {
                continue;
            };
            if !primary.has_shunt() {
                continue;
            }
            let list = splice::unsplice(&primary.list);
            let mode = confdir::mode_of(&path, 0o644);
            let converted = record
                .as_ref()
                .filter(|r| r.spliced == path && r.original_path != path);
            let result = match (converted, splice::list_to_single(&list)) {
                (Some(r), Some(single)) => {
                    confdir::write_atomic(&r.original_path, &splice::render(&single), mode)
                        .and_then(|()| std::fs::remove_file(&path))
                }
                _ => confdir::write_atomic(&path, &splice::render(&list), mode),
            };
            match result {
                Ok(()) => log::info!("removed shunt's entry from {}", path.display()),
                Err(e) => log::error!("cannot remove shunt's entry from {}: {e}", path.display()),
            }
        }
    }
}

fn remove_logged(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::error!("cannot remove {}: {e}", path.display()),
    }
}

fn plugin_types(p: &Primary) -> Vec<String> {
    p.plugins()
        .iter()
        .filter_map(|p| p.get("type").and_then(Value::as_str))
        .filter(|t| *t != splice::PLUGIN_TYPE)
        .map(str::to_owned)
        .collect()
}

/// The installer's life: install, watch, and on SIGTERM/SIGINT uninstall (unless told to keep).
/// `signals` must already be blocked in every thread (see [`block_signals`]).
pub fn run(mut installer: Installer, signals: SigSet) -> anyhow::Result<()> {
    confdir::remove_stale_temp_files(&installer.opts.conf_dir);
    confdir::remove_stale_temp_files(&installer.opts.bin_dir);
    let sigfd = SignalFd::new(&signals)?;
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    let dir_events = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF;
    let mut watched = false;
    let mut repaired = installer.opts.repair == Repair::Off;
    let mut next_resync = Instant::now();
    let mut thorough = true;
    loop {
        if !watched {
            watched = inotify
                .add_watch(&installer.opts.conf_dir, dir_events)
                .and_then(|_| inotify.add_watch(&installer.opts.bin_dir, dir_events))
                .map_err(|e| {
                    log::warn!(
                        "cannot watch {} and {}: {e}; checking every second",
                        installer.opts.conf_dir.display(),
                        installer.opts.bin_dir.display()
                    )
                })
                .is_ok();
        }
        let ready = installer.reconcile_with(thorough);
        if ready && !repaired {
            repaired = true;
            repair::run(&installer.opts, installer.entry(), &installer.status);
        }
        if thorough {
            next_resync = Instant::now() + installer.opts.resync;
        }
        let mut wait = next_resync.saturating_duration_since(Instant::now());
        if !watched || !ready {
            wait = wait.min(Duration::from_secs(1));
        }
        if let Some(hold) = installer.hold_until {
            wait = wait.min(hold.saturating_duration_since(Instant::now()));
        }
        let timeout =
            PollTimeout::try_from(wait.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::NONE);
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        thorough = Instant::now() >= next_resync;
        let signalled = fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        if signalled {
            let sig = sigfd
                .read_signal()
                .ok()
                .flatten()
                .and_then(|s| Signal::try_from(s.ssi_signo as i32).ok())
                .map_or("signal", Signal::as_str);
            if installer.opts.keep_on_exit {
                log::info!("{sig}: exiting, leaving shunt installed (keep-on-exit)");
            } else {
                log::info!("{sig}: uninstalling");
                installer.uninstall();
            }
            if let Some(sock) = &installer.opts.log_socket {
                let _ = std::fs::remove_file(sock);
            }
            return Ok(());
        }
        if fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            // Let a burst of events (an editor's save, a remove-and-recreate) settle.
            std::thread::sleep(DEBOUNCE);
            while let Ok(events) = inotify.read_events() {
                if events.is_empty() {
                    break;
                }
                if events.iter().any(|e| {
                    e.mask
                        .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
                }) {
                    watched = false;
                }
            }
        }
    }
}

/// Blocks the signals the installer handles, in the calling thread and every thread it starts
/// afterwards, so that only the signalfd sees them.
pub fn block_signals() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()?;
    Ok(set)
}
