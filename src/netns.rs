//! Entering the pod's network namespace: validating the path, and running work inside it
//! without ever leaving a thread of ours there.
//!
//! Work runs either on the calling thread, under a guard that brings the thread back to the
//! namespace it came from (and aborts the process if it cannot: carrying on in the pod's
//! namespace would be worse than failing the pod), or on a fresh thread that enters and then
//! ends. The calling thread is preferred because it is cheaper: on small VMs a new thread is
//! often placed on an idle vCPU, and waking it costs about a millisecond, a third of an ADD.
//! Child processes spawned inside (the iptables tools) inherit the namespace, and nothing else:
//! mounts, PID and user namespaces stay the host's, so the host's tools and files are used.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC, PROC_SUPER_MAGIC};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("CNI_NETNS {0:?} does not exist")]
    NotFound(PathBuf),
    #[error("CNI_NETNS {0:?} is not a network namespace")]
    NotANetns(PathBuf),
    #[error("opening CNI_NETNS {path:?}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path:?}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
}

/// An open handle on a network namespace. Holding the file keeps the namespace alive while we
/// work in it, even if the runtime unmounts the path meanwhile.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NetnsError::NotFound(path.to_owned()),
            _ => NetnsError::Open {
                path: path.to_owned(),
                source: e,
            },
        })?;
        // A netns bind mount shows up as nsfs; after the runtime unmounts it, an empty regular
        // file is all that is left at the path.
        let fs = fstatfs(file.as_fd()).map_err(|e| NetnsError::Open {
            path: path.to_owned(),
            source: e.into(),
        })?;
        let kind = fs.filesystem_type();
        if kind != NSFS_MAGIC && kind != PROC_SUPER_MAGIC {
            return Err(NetnsError::NotANetns(path.to_owned()));
        }
        Ok(Netns {
            file,
            path: path.to_owned(),
        })
    }

    /// Joins this namespace. Only for threads that end once their work is done, or under
    /// [`Inside`].
    fn enter(&self) -> Result<(), NetnsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
            // EINVAL: the file is a namespace, but not a network one.
            if source == nix::Error::EINVAL {
                NetnsError::NotANetns(self.path.clone())
            } else {
                NetnsError::Enter {
                    path: self.path.clone(),
                    source,
                }
            }
        })
    }

    /// Moves the calling thread into this namespace until the guard is dropped.
    fn enter_here(&self) -> Result<Inside, NetnsError> {
        let home = File::open("/proc/thread-self/ns/net").map_err(|source| NetnsError::Open {
            path: "/proc/thread-self/ns/net".into(),
            source,
        })?;
        self.enter()?;
        Ok(Inside { home })
    }

    /// Runs `work` inside this namespace on the calling thread, which is back in its own
    /// namespace when this returns (or unwinds).
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let _inside = self.enter_here()?;
        Ok(work())
    }

    /// Runs `work(item)` for every item inside this namespace, all at once: the first on the
    /// calling thread, each other on a thread of its own that ends when done. Results come back
    /// in order.
    pub fn run_each<I, T, F>(&self, items: Vec<I>, work: F) -> Vec<Result<T, NetnsError>>
    where
        I: Send,
        T: Send,
        F: Fn(I) -> T + Sync,
    {
        let work = &work;
        let mut items = items.into_iter();
        let first = items.next();
        std::thread::scope(|scope| {
            let others: Vec<_> = items
                .map(|item| {
                    scope.spawn(move || {
                        self.enter()?;
                        Ok(work(item))
                    })
                })
                .collect();
            let mut out: Vec<Result<T, NetnsError>> =
                first.map(|i| self.run(|| work(i))).into_iter().collect();
            out.extend(
                others
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
            );
            out
        })
    }
}

/// The calling thread is inside a pod netns while this lives.
struct Inside {
    home: File,
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            log::error!("cannot return to the host network namespace: {e}; aborting");
            std::process::abort();
        }
    }
}
