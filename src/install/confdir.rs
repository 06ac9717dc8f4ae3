//! The node's CNI directories as the installer sees them: which file is the primary
//! configuration, atomic writes that keep a file's mode, the installed plugin binary, and the
//! record of what the installer wrote (so that uninstall can put the original back).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::splice::{Form, Primary};

/// The primary configuration as found on disk.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub primary: Primary,
}

/// A file the runtime would skip, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub name: String,
    pub why: String,
}

/// The files a runtime would consider, in the order it would (byte order of the names, as Go's
/// `sort.Strings` in libcni).
pub fn candidates(dir: &Path) -> io::Result<Vec<(String, Form)>> {
    let mut names: Vec<(String, Form)> = fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Form::of(&name).map(|f| (name, f))
        })
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(names)
}

/// The first file the runtime would load, or the named one. Files that do not parse or have no
/// plugins are skipped, as the runtime skips them.
pub fn find_primary(dir: &Path, named: Option<&str>) -> io::Result<(Option<Found>, Vec<Skipped>)> {
    let mut skipped = Vec::new();
    for (name, form) in candidates(dir)? {
        if named.is_some_and(|n| n != name) {
            continue;
        }
        let path = dir.join(&name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match Primary::parse(form, &bytes) {
            Ok(primary) => {
                return Ok((
                    Some(Found {
                        path,
                        bytes,
                        primary,
                    }),
                    skipped,
                ))
            }
            Err(e) => skipped.push(Skipped {
                name,
                why: e.to_string(),
            }),
        }
    }
    Ok((None, skipped))
}

/// Replaces `path` with `bytes` in one rename: a reader sees the old file or the new one, never
/// a part. `mode` is the new file's permission bits.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name no runtime loads (no .conf/.conflist/.json ending), unique to this process.
    let tmp = dir.join(format!(".{name}.shunt-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes what a killed installer may have left half-written (its temp files, which no
/// runtime loads, but which would pile up).
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".shunt-") && name.ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The permission bits of an existing file, or `default`.
pub fn mode_of(path: &Path, default: u32) -> u32 {
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(default)
}

/// Puts the plugin binary in place if it is missing or differs; returns whether it wrote.
pub fn install_binary(source: &Path, dest: &Path) -> io::Result<bool> {
    let wanted = fs::read(source)?;
    let same = fs::read(dest).is_ok_and(|have| have == wanted) && mode_of(dest, 0) & 0o111 == 0o111;
    if same {
        return Ok(false);
    }
    write_atomic(dest, &wanted, 0o755)?;
    Ok(true)
}

/// What the installer last did to the conf dir, kept across its restarts in the state dir so
/// that uninstall can restore the primary's original bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The file shunt's entry was written to.
    pub spliced: PathBuf,
    /// The primary as it was before splicing: where it was and what it held.
    pub original_path: PathBuf,
    pub original: String,
    /// Exactly what the installer wrote to `spliced`.
    pub written: String,
}

impl Record {
    pub const FILE: &'static str = "install-record.json";

    pub fn load(state_dir: &Path) -> Option<Record> {
        let text = fs::read_to_string(state_dir.join(Self::FILE)).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        Some(Record {
            spliced: s("spliced")?.into(),
            original_path: s("originalPath")?.into(),
            original: s("original")?,
            written: s("written")?,
        })
    }

    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(state_dir)?;
        let v = json!({
            "spliced": self.spliced,
            "originalPath": self.original_path,
            "original": self.original,
            "written": self.written,
        });
        write_atomic(&state_dir.join(Self::FILE), v.to_string().as_bytes(), 0o600)
    }

    pub fn clear(state_dir: &Path) {
        let _ = fs::remove_file(state_dir.join(Self::FILE));
    }
}
