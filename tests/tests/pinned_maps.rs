//! A pin left by another build must match the program's map exactly (type, key size, value
//! size, max_entries), or loading refuses it and names the map and the difference: reusing a
//! map of another shape would make the programs read and write garbage.
use std::process::Command;

use vpcep::dataplane::Dataplane;
use vpcep_common::{
    endpoint::LocalNic,
    maps::{LOCAL_NICS, MAX_LOCAL_NICS},
};
use vpcep_tests::{harness::TempDir, require_root};

/// Pins a map of the program's name with the given shape, as another build might have.
fn pin_map(dir: &TempDir, kind: &str, key: usize, value: usize, entries: u32) {
    let path = dir.0.join(LOCAL_NICS);
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(["type", kind, "key", &key.to_string(), "value"])
        .args([&value.to_string(), "entries", &entries.to_string()])
        .args(["name", "VPCEP_LOCAL_NIC"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn refused(dir: &TempDir) -> String {
    match Dataplane::load_pinned(&dir.0) {
        Ok(_) => panic!("a pinned map of another shape was reused"),
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        }
    }
}

const VALUE: usize = size_of::<LocalNic>();

#[test]
fn a_pinned_map_with_another_value_size_is_refused() {
    require_root!();
    let dir = TempDir::bpffs("pin-value");
    pin_map(&dir, "hash", 4, VALUE + 4, MAX_LOCAL_NICS);
    let msg = refused(&dir);
    assert!(msg.contains(LOCAL_NICS), "{msg}");
    assert!(
        msg.contains(&format!("value size {} (pinned) != {VALUE}", VALUE + 4)),
        "{msg}"
    );
}

#[test]
fn a_pinned_map_with_another_key_size_is_refused() {
    require_root!();
    let dir = TempDir::bpffs("pin-key");
    pin_map(&dir, "hash", 8, VALUE, MAX_LOCAL_NICS);
    let msg = refused(&dir);
    assert!(msg.contains(LOCAL_NICS), "{msg}");
    assert!(msg.contains("key size 8 (pinned) != 4"), "{msg}");
}

#[test]
fn a_pinned_map_with_other_max_entries_is_refused() {
    require_root!();
    let dir = TempDir::bpffs("pin-entries");
    pin_map(&dir, "hash", 4, VALUE, MAX_LOCAL_NICS / 2);
    let msg = refused(&dir);
    assert!(msg.contains(LOCAL_NICS), "{msg}");
    assert!(
        msg.contains(&format!(
            "max_entries {} (pinned) != {MAX_LOCAL_NICS}",
            MAX_LOCAL_NICS / 2
        )),
        "{msg}"
    );
}

#[test]
fn a_pinned_map_of_another_type_is_refused() {
    require_root!();
    let dir = TempDir::bpffs("pin-type");
    pin_map(&dir, "array", 4, VALUE, MAX_LOCAL_NICS);
    let msg = refused(&dir);
    assert!(msg.contains(LOCAL_NICS), "{msg}");
    assert!(msg.contains("type Array (pinned) != Hash"), "{msg}");
}

#[test]
fn matching_pins_are_reused() {
    require_root!();
    let dir = TempDir::bpffs("pin-same");
    pin_map(&dir, "hash", 4, VALUE, MAX_LOCAL_NICS);
    let mut dp = Dataplane::load_pinned(&dir.0).unwrap();
    dp.set_local_nic(7, LocalNic::default()).unwrap();
    // The entry went into the map behind the pin.
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(dir.0.join(LOCAL_NICS))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("07 00 00 00"), "{dump}");
}
