//! Entering the pod's network namespace: validating the path, and running work on threads that
//! join the namespace and then end.
//!
//! Only short-lived threads ever `setns`; the main thread stays in the host namespace for its
//! whole life. A thread that has entered is never reused, so no error path can leave work of
//! ours running in the wrong namespace. Child processes spawned from such a thread (the
//! iptables tools) inherit its namespace, and nothing else: mounts, PID and user namespaces stay
//! the host's, so the host's tools and files are the ones used.

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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Joins this namespace. Only for threads that end once their work is done.
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

    /// Runs `work` on a thread inside this namespace; the thread ends before this returns.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter()?;
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs `work(item)` for every item, each on its own thread inside this namespace, all at
    /// once, and returns their results in order. The threads end before this returns.
    pub fn run_each<I, T, F>(&self, items: Vec<I>, work: F) -> Vec<Result<T, NetnsError>>
    where
        I: Send,
        T: Send,
        F: Fn(I) -> T + Sync,
    {
        let work = &work;
        std::thread::scope(|scope| {
            let handles: Vec<_> = items
                .into_iter()
                .map(|item| {
                    scope.spawn(move || {
                        self.enter()?;
                        Ok(work(item))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }
}
