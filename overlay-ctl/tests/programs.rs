//! Every program passes this kernel's verifier; prints their sizes.

mod common;

use aya::programs::ProgramInfo;
use overlay_ctl::dataplane::{Dataplane, programs};

fn insns(info: ProgramInfo) -> String {
    match (info.size_translated(), info.size_jitted()) {
        (Some(x), j) => format!("{} xlated insns, {} bytes jitted", x / 8, j),
        (None, j) => format!("{j} bytes jitted"),
    }
}

#[test]
fn all_programs_verify() {
    overlay_testnet::require_root().unwrap();
    let mut dp = Dataplane::load(None).expect("load object");
    for name in [programs::FROM_INSTANCE, programs::UPLINK] {
        let info = dp.classifier(name).expect(name).info().expect("info");
        println!("{name}: {}", insns(info));
    }
    let info = dp
        .xdp(programs::UPLINK_XDP)
        .expect("xdp")
        .info()
        .expect("info");
    println!("{}: {}", programs::UPLINK_XDP, insns(info));
}

/// Pins from another version (here: a CONNTRACK of another capacity) are
/// refused with an error that names the map and the way out; matching pins
/// are adopted.
#[test]
fn pins_of_another_layout_are_refused() {
    overlay_testnet::require_root().unwrap();
    let work = common::agents::Workdir::new("pins");
    let dir = work.dir.join("bpf").join("n1");
    std::fs::create_dir_all(&dir).unwrap();
    drop(Dataplane::load(Some(&dir)).expect("fresh pins"));
    drop(Dataplane::load(Some(&dir)).expect("adopting its own pins"));
    let conntrack = dir.join("CONNTRACK");
    std::fs::remove_file(&conntrack).unwrap();
    let mut loader = aya::EbpfLoader::new();
    loader
        .map_pin_path("CONNTRACK", &conntrack)
        .map_max_entries("CONNTRACK", 1024);
    drop(
        loader
            .load(overlay_ctl::dataplane::OBJECT)
            .expect("an odd CONNTRACK"),
    );
    let err = Dataplane::load(Some(&dir))
        .err()
        .expect("incompatible pins")
        .to_string();
    assert!(
        err.contains("CONNTRACK") && err.contains("capacity 1024") && err.contains("--teardown"),
        "{err}"
    );
    let sized = overlay_ctl::dataplane::Sizes { conntrack: 1024 };
    Dataplane::load_sized(Some(&dir), sized)
        .expect("a node configured with 1024 entries adopts them");
}

/// Whole tables are read in batches (BPF_MAP_LOOKUP_BATCH), across several
/// batches and without losing or repeating an entry.
#[test]
fn tables_are_read_whole_in_batches() {
    overlay_testnet::require_root().unwrap();
    let mut dp = Dataplane::load(None).expect("load object");
    let node_ip = |i: u32| std::net::Ipv4Addr::from(0x0a1e_0000 + i);
    for i in 1..=10_000 {
        dp.tables.put_backend(i, node_ip(i), i % 7).unwrap();
    }
    let mut got = dp.tables.backends();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got.len(), 10_000);
    for (i, (id, b)) in (1..).zip(&got) {
        assert_eq!(
            (*id, b.nsip, b.node),
            (i, u32::from_ne_bytes(node_ip(i).octets()), i % 7)
        );
    }
}
