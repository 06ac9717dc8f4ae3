//! The installer over every primary config in `../shared/conflists/` (the team's collection of
//! what nodes really have): splice, splice again (no change), uninstall (original restored,
//! byte for byte), with the spliced text kept as golden files in `tests/golden/conflists/`.
//! SHUNT_BLESS=1 rewrites the golden files. No root needed: temp dirs only.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use shunt::install::splice::{self, Form, Primary};
use shunt::install::{confdir, Installer, Mode, Options, Repair};

fn conflists() -> PathBuf {
    let dir = std::env::var_os("SHUNT_CONFLISTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conflists"));
    assert!(
        dir.is_dir(),
        "{} is missing: the team's primary CNI configs live beside the repo (or set SHUNT_CONFLISTS)",
        dir.display()
    );
    dir
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/conflists")
}

struct Node {
    root: PathBuf,
    installer: Installer,
}

impl Node {
    fn new(tag: &str) -> Node {
        let root = std::env::temp_dir().join(format!("shunt-golden-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["bin", "net.d", "state", "image"] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        fs::write(root.join("image/shunt"), b"#!/bin/true\n").expect("binary");
        let mut plugin_config = Map::new();
        plugin_config.insert("excludeNamespaces".into(), json!(["kube-system"]));
        plugin_config.insert("logLevel".into(), json!("info"));
        plugin_config.insert("iptablesBackend".into(), json!("auto"));
        let installer = Installer::new(Options {
            bin_dir: root.join("bin"),
            conf_dir: root.join("net.d"),
            primary: None,
            mode: Mode::Chained,
            plugin_binary: root.join("image/shunt"),
            state_dir: root.join("state"),
            log_socket: None,
            health_addr: None,
            cri_socket: root.join("no-cri.sock"),
            repair: Repair::Off,
            host_root: None,
            keep_on_exit: false,
            plugin_config,
            resync: Duration::from_secs(30),
        });
        Node { root, installer }
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.root.join("net.d").join(name)
    }

    /// Every file in the conf dir and its contents.
    fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(self.root.join("net.d"))
            .expect("read dir")
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).expect("read"),
                )
            })
            .collect();
        files.sort();
        files
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

#[test]
fn every_primary_splices_once_and_comes_back_byte_for_byte() {
    let bless = std::env::var_os("SHUNT_BLESS").is_some();
    let mut seen = 0;
    let mut unusable = 0;
    let mut entries: Vec<_> = fs::read_dir(conflists())
        .expect("read conflists")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| Form::of(n).is_some())
        .collect();
    entries.sort();
    for name in entries {
        let original = fs::read(conflists().join(&name)).expect("read");
        let form = Form::of(&name).expect("form");
        let mut node = Node::new(&name.replace('.', "-"));
        fs::write(node.conf(&name), &original).expect("write");

        let Ok(primary) = Primary::parse(form, &original) else {
            // Truncated or empty: never the primary, never rewritten, and nothing is ready.
            unusable += 1;
            assert!(
                !node.installer.reconcile(),
                "{name}: an unusable file made the node ready"
            );
            assert_eq!(
                node.snapshot(),
                vec![(name.clone(), original.clone())],
                "{name}: an unusable file was rewritten"
            );
            continue;
        };
        seen += 1;

        assert!(node.installer.reconcile(), "{name}: not spliced");
        let spliced_name = match form {
            Form::List => name.clone(),
            Form::Single => format!("{}.conflist", name.rsplit_once('.').expect("ext").0),
        };
        let after = node.snapshot();
        assert_eq!(
            after.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            vec![spliced_name.clone()],
            "{name}: the conf dir should hold exactly the spliced list"
        );
        let spliced = after[0].1.clone();

        let golden = golden_dir().join(format!("{name}.spliced"));
        if bless {
            fs::create_dir_all(golden_dir()).expect("mkdir");
            fs::write(&golden, &spliced).expect("bless");
        }
        let want = fs::read(&golden)
            .unwrap_or_else(|_| panic!("{}: missing; run with SHUNT_BLESS=1", golden.display()));
        assert_eq!(
            String::from_utf8_lossy(&spliced),
            String::from_utf8_lossy(&want),
            "{name}: spliced text differs from {}",
            golden.display()
        );

        // Nothing is lost: the spliced list minus shunt is the original list, field for field,
        // plugin for plugin, in order; shunt is last and once.
        let reread = Primary::parse(Form::List, &spliced).expect("spliced parses");
        assert_eq!(
            splice::unsplice(&reread.list),
            splice::unsplice(&primary.list)
        );
        assert!(reread.is_spliced(node.installer.entry()), "{name}");
        if form == Form::Single {
            let plugins = reread.plugins();
            let original_obj: Value = serde_json::from_slice(&original).expect("json");
            assert_eq!(
                plugins[0], original_obj,
                "{name}: the .conf's plugin changed"
            );
        }

        // Again: no write at all.
        let mtime = fs::metadata(node.conf(&spliced_name))
            .and_then(|m| m.modified())
            .expect("mtime");
        std::thread::sleep(Duration::from_millis(5));
        assert!(node.installer.reconcile());
        assert_eq!(
            node.snapshot(),
            after,
            "{name}: splicing twice changed the file"
        );
        assert_eq!(
            fs::metadata(node.conf(&spliced_name))
                .and_then(|m| m.modified())
                .expect("mtime"),
            mtime,
            "{name}: splicing twice rewrote the file"
        );
        assert!(node.root.join("bin/shunt").exists());

        // Uninstall: the original file, name and bytes, and no binary.
        node.installer.uninstall();
        assert_eq!(
            node.snapshot(),
            vec![(name.clone(), original.clone())],
            "{name}: not restored byte for byte"
        );
        assert!(!node.root.join("bin/shunt").exists());
    }
    assert!(seen >= 15, "only {seen} usable primaries in the collection");
    assert!(
        unusable >= 2,
        "the truncated and the empty list were not both seen"
    );
}

#[test]
fn a_primary_changed_since_splicing_is_unspliced_semantically() {
    let mut node = Node::new("changed");
    let original = fs::read(conflists().join("calico.conflist")).expect("read");
    fs::write(node.conf("10-calico.conflist"), &original).expect("write");
    assert!(node.installer.reconcile());
    // Someone (an operator, the primary CNI) edits the list but keeps shunt's entry.
    let text = fs::read_to_string(node.conf("10-calico.conflist")).expect("read");
    let mut list: Value = serde_json::from_str(&text).expect("json");
    list["plugins"]
        .as_array_mut()
        .expect("plugins")
        .insert(0, json!({"type": "tuning", "sysctl": {}}));
    confdir::write_atomic(
        &node.conf("10-calico.conflist"),
        list.to_string().as_bytes(),
        0o644,
    )
    .expect("write");
    node.installer.uninstall();
    let after: Value =
        serde_json::from_slice(&fs::read(node.conf("10-calico.conflist")).expect("read"))
            .expect("json");
    let types: Vec<&str> = after["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["tuning", "calico", "portmap", "bandwidth"]);
}

#[test]
fn the_primary_is_the_first_loadable_file_or_the_named_one() {
    let node = Node::new("choose");
    let dir = node.root.join("net.d");
    fs::write(dir.join("00-broken.conflist"), b"{\"plugins\": [").expect("write");
    fs::write(
        dir.join("01-empty.conflist"),
        br#"{"name":"x","plugins":[]}"#,
    )
    .expect("write");
    fs::write(dir.join("05-notes.txt"), b"not a config").expect("write");
    fs::write(
        dir.join("10-b.conflist"),
        br#"{"name":"b","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
    )
    .expect("write");
    fs::write(
        dir.join("20-a.conf"),
        br#"{"name":"a","cniVersion":"1.0.0","type":"ptp"}"#,
    )
    .expect("write");
    let (found, skipped) = confdir::find_primary(&dir, None).expect("find");
    assert_eq!(found.expect("found").path, dir.join("10-b.conflist"));
    assert_eq!(skipped.len(), 2);
    let (found, _) = confdir::find_primary(&dir, Some("20-a.conf")).expect("find");
    assert_eq!(found.expect("found").path, dir.join("20-a.conf"));
}
