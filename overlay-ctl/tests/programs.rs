//! Every program passes this kernel's verifier; prints their sizes.

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
