//! The iptables owner match calls getpwnam() on "1337" before reading it as a number. On nodes
//! whose NSS reaches the network (LDAP, sssd, GCE OS Login) that lookup stalls pod start-up.
//! Here the host's NSS is given a module of our own that records every lookup it gets; a plain
//! iptables-restore is seen asking it, shunt's restores are not.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

const MODULE: &str = r#"
#include <errno.h>
#include <grp.h>
#include <nss.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>

static void mark(const char *what, const char *name) {
    const char *file = getenv("SHUNT_NSS_MARKER");
    FILE *f = file ? fopen(file, "a") : NULL;
    if (f) { fprintf(f, "%s %s\n", what, name); fclose(f); }
}

enum nss_status _nss_shunttest_getpwnam_r(const char *name, struct passwd *p, char *buf,
                                          size_t len, int *err) {
    mark("getpwnam", name); *err = ENOENT; return NSS_STATUS_NOTFOUND;
}

enum nss_status _nss_shunttest_getgrnam_r(const char *name, struct group *g, char *buf,
                                          size_t len, int *err) {
    mark("getgrnam", name); *err = ENOENT; return NSS_STATUS_NOTFOUND;
}
"#;

/// Builds libnss_shunttest.so.2 and an nsswitch.conf that uses it; returns the directory.
fn build_module() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shunt-nss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("module.c"), MODULE).unwrap();
    let ok = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libnss_shunttest.so.2"))
        .arg(dir.join("module.c"))
        .status()
        .expect("gcc")
        .success();
    assert!(ok, "building the NSS module");
    std::fs::write(
        dir.join("nsswitch.conf"),
        "passwd: files shunttest\ngroup: files shunttest\n",
    )
    .unwrap();
    dir
}

/// Runs `program args` in a private mount namespace whose /etc/nsswitch.conf uses the module.
fn with_recording_nss(
    dir: &Path,
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    stdin: &[u8],
) -> Run {
    let script = format!(
        "mount --bind {}/nsswitch.conf /etc/nsswitch.conf && exec \"$@\"",
        dir.display()
    );
    let mut all = vec!["-m", "sh", "-c", &script, "sh", program];
    all.extend_from_slice(args);
    let mut env = env.to_vec();
    env.push(("LD_LIBRARY_PATH".into(), dir.display().to_string()));
    env.push((
        "SHUNT_NSS_MARKER".into(),
        dir.join("lookups").display().to_string(),
    ));
    run_program("unshare", &all, &env, stdin)
}

fn lookups(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("lookups")).unwrap_or_default()
}

#[test]
fn shunt_keeps_the_owner_match_away_from_host_nss() {
    let dir = build_module();
    let ns = Ns::new("nss");
    let netns = ns.path.to_string_lossy().into_owned();

    // Control: a plain restore with an owner match asks the host's NSS for user "1337".
    let rules = "*nat\n-N NSS_PROBE\n-A NSS_PROBE -m owner --uid-owner 1337 -j RETURN\nCOMMIT\n";
    let plain = with_recording_nss(
        &dir,
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "iptables-nft-restore",
            "--noflush",
        ],
        &[],
        rules.as_bytes(),
    );
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(
        lookups(&dir).contains("getpwnam 1337"),
        "the control restore did not reach the recording module: {:?}",
        lookups(&dir)
    );
    std::fs::remove_file(dir.join("lookups")).unwrap();

    // shunt, under the same NSS, for both backends and both families.
    for backend in ["nft", "legacy"] {
        let c = conf(
            "1.0.0",
            Some(prev_result("1.0.0", &ns.path, &[POD_V4, POD_V6])),
            Some(json!({"shunt.dev/redirect": "enabled"})),
            json!({"iptablesBackend": backend}),
        );
        let out = with_recording_nss(
            &dir,
            &shunt_bin(),
            &[],
            &cni_env("ADD", &netns),
            c.to_string().as_bytes(),
        );
        out.ok();
        assert!(ns.exec(&["iptables-save"]).contains("--uid-owner 1337"));
        assert_eq!(
            lookups(&dir),
            "",
            "shunt's tools asked the host's NSS ({backend})"
        );
        shunt("DEL", &netns, &c).ok();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
