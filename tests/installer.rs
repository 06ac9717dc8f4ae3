//! The real `shunt-install` process against temp CNI dirs: it installs, puts its entry back
//! within a second whatever another writer does to the primary, backs off from a writer that
//! keeps removing it, uninstalls on SIGTERM, and never leaves a broken file when killed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use shunt::install::splice::{Form, Primary};

const INSTALLER: &str = env!("CARGO_BIN_EXE_shunt-install");

fn conflist(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conflists");
    fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name} from {}: {e}", dir.display()))
}

struct Node {
    root: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(tag: &str) -> Node {
        let root = std::env::temp_dir().join(format!("shunt-inst-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["bin", "net.d", "state"] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        Node { root, child: None }
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.root.join("net.d").join(name)
    }

    fn binary(&self) -> PathBuf {
        self.root.join("bin/shunt")
    }

    /// `shunt-install` pointed at this node's directories and the built plugin.
    fn installer(&self) -> Command {
        let mut c = Command::new(INSTALLER);
        c.arg("--cni-bin-dir")
            .arg(self.root.join("bin"))
            .arg("--cni-conf-dir")
            .arg(self.root.join("net.d"))
            .arg("--state-dir")
            .arg(self.root.join("state"))
            .arg("--plugin-binary")
            .arg(common::shunt_bin())
            .args(["--health-addr", "off"]);
        c
    }

    fn start(&mut self, extra: &[&str]) {
        let out = fs::File::create(self.root.join("installer.log")).expect("log");
        let child = self
            .installer()
            .arg("--log-socket")
            .arg(self.root.join("state/log.sock"))
            .args(["--repair", "off"])
            .args(extra)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start shunt-install");
        self.child = Some(child);
    }

    /// `shunt-install --once` against this node's dirs.
    fn once(&self) -> std::process::Output {
        self.once_with(&[])
    }

    fn once_with(&self, extra: &[&str]) -> std::process::Output {
        self.installer()
            .args(["--once", "--log-socket", "off"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run shunt-install --once")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.root.join("installer.log")).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Waits for SIGTERM's work to finish.
    fn terminate(&mut self) {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        let status = self.child.take().expect("running").wait().expect("wait");
        assert!(
            status.success(),
            "installer exited {status}: {}",
            self.log()
        );
    }

    /// Polls `f` for up to `limit`; returns how long it took.
    fn within(&self, limit: Duration, what: &str, f: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; installer log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }

    /// Whether `name` holds shunt's entry last, exactly once.
    fn spliced(&self, name: &str) -> bool {
        let Ok(bytes) = fs::read(self.conf(name)) else {
            return false;
        };
        let Ok(p) = Primary::parse(Form::List, &bytes) else {
            return false;
        };
        let plugins = p.plugins();
        plugins.iter().filter(|p| p["type"] == "shunt").count() == 1
            && plugins.last().is_some_and(|p| p["type"] == "shunt")
    }

    fn types(&self, name: &str) -> Vec<String> {
        let v: Value =
            serde_json::from_slice(&fs::read(self.conf(name)).expect("read")).expect("json");
        v["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .map(|p| p["type"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Every file a runtime would load parses.
    fn all_loadable_files_parse(&self) {
        for e in fs::read_dir(self.root.join("net.d"))
            .expect("dir")
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(form) = Form::of(&name) {
                let bytes = fs::read(e.path()).expect("read");
                assert!(
                    Primary::parse(form, &bytes).is_ok(),
                    "{name} is broken: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn the_entry_comes_back_within_a_second_whatever_rewrites_the_primary() {
    let mut node = Node::new("rewrite");
    let calico = conflist("calico.conflist");
    fs::write(node.conf("10-calico.conflist"), &calico).expect("write");
    node.start(&[]);
    node.within(SECOND * 3, "first install", || {
        node.spliced("10-calico.conflist") && node.binary().exists()
    });
    let tmp = node.root.join("tmp.conflist");

    // Each way another writer can rewrite the primary, and the file that must end up spliced.
    type Rewrite = Box<dyn Fn(&Node)>;
    let calico2 = calico.clone();
    let ways: Vec<(&str, Rewrite, &str)> = vec![
        (
            "overwritten in place",
            Box::new(move |n| fs::write(n.conf("10-calico.conflist"), &calico2).expect("w")),
            "10-calico.conflist",
        ),
        (
            "replaced by rename",
            Box::new({
                let c = calico.clone();
                let tmp = tmp.clone();
                move |n| {
                    fs::write(&tmp, &c).expect("w");
                    fs::rename(&tmp, n.conf("10-calico.conflist")).expect("mv");
                }
            }),
            "10-calico.conflist",
        ),
        (
            "deleted, then recreated",
            Box::new({
                let c = calico.clone();
                move |n| {
                    fs::remove_file(n.conf("10-calico.conflist")).expect("rm");
                    std::thread::sleep(Duration::from_millis(200));
                    fs::write(n.conf("10-calico.conflist"), &c).expect("w");
                }
            }),
            "10-calico.conflist",
        ),
        (
            "written in two halves",
            Box::new({
                let c = calico.clone();
                move |n| {
                    use std::io::Write;
                    let mut f = fs::File::create(n.conf("10-calico.conflist")).expect("create");
                    f.write_all(&c[..c.len() / 2]).expect("w");
                    f.sync_all().expect("sync");
                    std::thread::sleep(Duration::from_millis(300));
                    f.write_all(&c[c.len() / 2..]).expect("w");
                }
            }),
            "10-calico.conflist",
        ),
        (
            "renamed to another name",
            Box::new(|n| {
                fs::rename(n.conf("10-calico.conflist"), n.conf("05-calico.conflist")).expect("mv")
            }),
            "05-calico.conflist",
        ),
        (
            "rewritten with a plugin added and the entry dropped",
            Box::new(|n| {
                let mut v: Value =
                    serde_json::from_slice(&fs::read(n.conf("05-calico.conflist")).expect("r"))
                        .expect("json");
                let plugins = v["plugins"].as_array_mut().expect("plugins");
                plugins.retain(|p| p["type"] != "shunt");
                plugins.push(serde_json::json!({"type": "tuning"}));
                fs::write(n.conf("05-calico.conflist"), v.to_string()).expect("w");
            }),
            "05-calico.conflist",
        ),
        (
            "the entry moved to the front and duplicated",
            Box::new(|n| {
                let mut v: Value =
                    serde_json::from_slice(&fs::read(n.conf("05-calico.conflist")).expect("r"))
                        .expect("json");
                let plugins = v["plugins"].as_array_mut().expect("plugins");
                let entry = plugins.pop().expect("entry");
                plugins.insert(0, entry.clone());
                plugins.insert(2, entry);
                fs::write(n.conf("05-calico.conflist"), v.to_string()).expect("w");
            }),
            "05-calico.conflist",
        ),
        (
            "the .conflist replaced by a single-plugin .conf",
            Box::new(|n| {
                fs::remove_file(n.conf("05-calico.conflist")).expect("rm");
                fs::write(n.conf("05-bridge.conf"), conflist("bridge-single.conf")).expect("w");
            }),
            "05-bridge.conflist",
        ),
        (
            "a new primary sorting first appears",
            Box::new(|n| {
                fs::write(n.conf("01-cilium.conflist"), conflist("cilium.conflist")).expect("w")
            }),
            "01-cilium.conflist",
        ),
        (
            "the primary's owner restores its own backup over it",
            Box::new(|n| {
                fs::write(n.conf("01-cilium.conflist"), conflist("cilium.conflist")).expect("w")
            }),
            "01-cilium.conflist",
        ),
    ];
    for (what, rewrite, expect) in &ways {
        rewrite(&node);
        let took = node.within(SECOND, what, || node.spliced(expect));
        node.all_loadable_files_parse();
        eprintln!("{what}: back in {took:?}");
        // Spread out as independent rewrites are, so that these ten are not taken for a fight.
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert_eq!(
        node.types("05-bridge.conflist"),
        ["bridge", "shunt"],
        "the .conf's plugin kept in the list"
    );
    assert!(!node.conf("05-bridge.conf").exists());

    // The binary: removed, and corrupted.
    fs::remove_file(node.binary()).expect("rm");
    node.within(SECOND, "binary restored after removal", || {
        node.binary().exists()
    });
    fs::write(node.binary(), b"garbage").expect("w");
    let want = fs::read(common::shunt_bin()).expect("read");
    node.within(SECOND, "binary restored after corruption", || {
        fs::read(node.binary()).is_ok_and(|b| b == want)
    });
}

#[test]
fn a_writer_that_keeps_removing_the_entry_gets_a_warning_not_a_hot_loop() {
    let mut node = Node::new("fight");
    let flannel = conflist("flannel.conflist");
    fs::write(node.conf("10-flannel.conflist"), &flannel).expect("write");
    node.start(&[]);
    node.within(SECOND * 3, "first install", || {
        node.spliced("10-flannel.conflist")
    });
    for _ in 0..12 {
        fs::write(node.conf("10-flannel.conflist"), &flannel).expect("w");
        std::thread::sleep(Duration::from_millis(150));
    }
    let log = node.log();
    let warning = log
        .lines()
        .find(|l| l.contains("backing off"))
        .unwrap_or_else(|| panic!("no back-off warning:\n{log}"));
    assert!(warning.contains("10-flannel.conflist"), "{warning}");
    assert!(warning.contains("\"level\":\"warn\""), "{warning}");
    let splices = log.lines().filter(|l| l.contains("spliced shunt")).count();
    assert!(
        splices <= 8,
        "{splices} splices in under two seconds: a hot loop\n{log}"
    );
    // It does come back once the writer stops.
    node.within(Duration::from_secs(5), "spliced after backing off", || {
        node.spliced("10-flannel.conflist")
    });
}

#[test]
fn sigterm_restores_the_primary_and_removes_the_binary() {
    for (file, original, spliced) in [
        (
            "10-calico.conflist",
            "calico.conflist",
            "10-calico.conflist",
        ),
        ("10-bridge.conf", "bridge-single.conf", "10-bridge.conflist"),
    ] {
        let mut node = Node::new("term");
        let bytes = conflist(original);
        fs::write(node.conf(file), &bytes).expect("write");
        node.start(&[]);
        node.within(SECOND * 3, "install", || node.spliced(spliced));
        node.terminate();
        let files: Vec<String> = fs::read_dir(node.root.join("net.d"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, [file], "only the original file is left");
        assert_eq!(fs::read(node.conf(file)).expect("read"), bytes);
        assert!(!node.binary().exists(), "the binary was left behind");
        assert!(node.log().contains("uninstalling"));
    }
}

#[test]
fn keep_on_exit_leaves_everything_for_the_next_version() {
    let mut node = Node::new("keep");
    fs::write(node.conf("10-calico.conflist"), conflist("calico.conflist")).expect("write");
    node.start(&["--keep-on-exit"]);
    node.within(SECOND * 3, "install", || node.spliced("10-calico.conflist"));
    node.terminate();
    assert!(node.spliced("10-calico.conflist"));
    assert!(node.binary().exists());
    // The next version takes over without rewriting anything, and uninstalls byte-exact.
    let before = fs::read(node.conf("10-calico.conflist")).expect("read");
    node.start(&[]);
    node.within(SECOND * 3, "ready", || {
        node.log().contains("\"msg\":\"ready\"")
    });
    assert_eq!(
        fs::read(node.conf("10-calico.conflist")).expect("read"),
        before
    );
    node.terminate();
    assert_eq!(
        fs::read(node.conf("10-calico.conflist")).expect("read"),
        conflist("calico.conflist")
    );
}

#[test]
fn killing_the_installer_mid_write_never_leaves_a_broken_file() {
    let mut node = Node::new("kill");
    let calico = conflist("calico.conflist");
    let single = conflist("bridge-single.conf");
    for round in 0..30u64 {
        // Alternate a list and a .conf (whose conversion writes one file and removes another).
        if round % 2 == 0 {
            let _ = fs::remove_file(node.conf("10-x.conflist"));
            fs::write(node.conf("10-x.conflist"), &calico).expect("w");
        } else {
            let _ = fs::remove_file(node.conf("10-x.conflist"));
            fs::write(node.conf("10-x.conf"), &single).expect("w");
        }
        node.start(&[]);
        // Kill at a different moment each round: before, during and after the splice.
        std::thread::sleep(Duration::from_micros(500 + round * 700));
        kill(node.pid(), Signal::SIGKILL).expect("SIGKILL");
        let _ = node.child.take().expect("child").wait();
        node.all_loadable_files_parse();
        let loadable: Vec<_> = fs::read_dir(node.root.join("net.d"))
            .expect("dir")
            .flatten()
            .filter(|e| Form::of(&e.file_name().to_string_lossy()).is_some())
            .collect();
        assert!(!loadable.is_empty(), "round {round}: no config left at all");
        for e in loadable {
            let _ = fs::remove_file(e.path());
        }
    }
    // A later installer clears what killed ones left half-written.
    fs::write(node.conf("10-x.conflist"), &calico).expect("w");
    node.start(&[]);
    node.within(SECOND * 3, "install", || node.spliced("10-x.conflist"));
    let leftovers: Vec<_> = fs::read_dir(node.root.join("net.d"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn once_installs_and_exits() {
    let node = Node::new("once");
    fs::write(node.conf("10-calico.conflist"), conflist("calico.conflist")).expect("write");
    let out = node.once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(node.spliced("10-calico.conflist"));
    // Every stdout line is one JSON object.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string());
    }
    // Nothing to install into: exit 1, saying why.
    let empty = Node::new("once-empty");
    let out = empty.once();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no primary CNI configuration"));
}

#[test]
fn bad_flags_are_refused_naming_them() {
    for (args, needle) in [
        (vec!["--preset", "eks"], "--preset"),
        (vec!["--repair", "maybe"], "--repair"),
        (vec!["--log-level", "loud"], "logLevel"),
        (vec!["--iptables-backend", "ebpf"], "iptablesBackend"),
        (vec!["--frobnicate"], "--frobnicate"),
        (vec!["--plugin-config", "[1]"], "--plugin-config"),
        (
            vec!["--plugin-config", r#"{"profiles":["consul"]}"#],
            "profiles",
        ),
        (
            vec!["--plugin-config", r#"{"logLevel":"debug"}"#],
            "--log-level",
        ),
    ] {
        let out = Command::new(INSTALLER).args(&args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle), "{args:?}: {text}");
    }
}

#[test]
fn plugin_config_lands_in_the_entry() {
    let node = Node::new("plugin-config");
    fs::write(node.conf("10-calico.conflist"), conflist("calico.conflist")).expect("write");
    let out = node.once_with(&[
        "--plugin-config",
        r#"{"profiles":["istio","linkerd"],"istio":{"dnsCapture":true}}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let list: Value =
        serde_json::from_str(&fs::read_to_string(node.conf("10-calico.conflist")).expect("read"))
            .expect("json");
    let entry = list["plugins"]
        .as_array()
        .and_then(|p| p.last())
        .expect("entry");
    assert_eq!(entry["type"], "shunt");
    assert_eq!(entry["profiles"], serde_json::json!(["istio", "linkerd"]));
    assert_eq!(entry["istio"]["dnsCapture"], true);
}
