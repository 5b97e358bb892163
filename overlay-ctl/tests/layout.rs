//! Layout versions of pinned maps: what a loading agent adopts, replaces or
//! refuses (`dataplane::layout`), on a bpffs of the test's own.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use common::agents::Workdir;
use overlay_common::maps::Layout;
use overlay_common::registry::def;
use overlay_ctl::dataplane::{Dataplane, Error, Tables};

const VIP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 9);

/// The pinned `LAYOUT` map of `dir`.
fn layout(dir: &Path) -> HashMap<MapData, Layout, u32> {
    let data = MapData::from_pin(dir.join(def::LAYOUT.name)).expect("LAYOUT is pinned");
    HashMap::try_from(Map::HashMap(data)).expect("LAYOUT is a hash map")
}

/// The kernel's id of the map pinned as `name`: a new map gets a new one.
fn map_id(dir: &Path, name: &str) -> u32 {
    let data = MapData::from_pin(dir.join(name)).expect("pinned");
    data.info().expect("map info").id()
}

/// A dataplane pinned in `dir` with one ServIP written.
fn first_load(dir: &Path) {
    let mut dp = Dataplane::load(Some(dir)).expect("first load");
    dp.tables
        .put_servip(VIP, 7, overlay_common::policy::Policy::Closest, &[])
        .expect("ServIP");
    let recorded = dp.tables.layout();
    assert_eq!(recorded.get(def::SERVIPS.name), Some(&def::SERVIPS.version));
    assert_eq!(recorded.len(), overlay_common::registry::PINNED.len());
}

#[test]
fn pins_of_a_newer_layout_are_refused_and_left_alone() {
    let work = Workdir::new("layout-newer");
    let dir = work.dir.join("bpf").join("n1");
    std::fs::create_dir_all(&dir).unwrap();
    first_load(&dir);
    let newer = def::SERVIPS.version + 1;
    layout(&dir)
        .insert(Layout::of(def::SERVIPS.name), newer, 0)
        .unwrap();
    let id = map_id(&dir, def::SERVIPS.name);

    let err = Dataplane::load(Some(&dir))
        .err()
        .expect("a downgrade is refused");
    assert!(matches!(err, Error::Downgrade { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("SERVIPS") && text.contains("newer release"),
        "{text}"
    );
    // Nothing changed: the same map, the same record, the ServIP still there.
    assert_eq!(map_id(&dir, def::SERVIPS.name), id);
    assert_eq!(
        layout(&dir).get(&Layout::of(def::SERVIPS.name), 0).unwrap(),
        newer
    );
    let dp = Tables::open_pinned(&dir).expect("pins still open");
    assert_eq!(dp.servips().len(), 1);
}

#[test]
fn pins_of_an_older_layout_are_replaced_the_rest_adopted() {
    let work = Workdir::new("layout-older");
    let dir = work.dir.join("bpf").join("n1");
    std::fs::create_dir_all(&dir).unwrap();
    first_load(&dir);
    layout(&dir)
        .insert(Layout::of(def::SERVIPS.name), 0, 0)
        .unwrap();
    let (servips, conntrack) = (
        map_id(&dir, def::SERVIPS.name),
        map_id(&dir, def::CONNTRACK.name),
    );

    let dp = Dataplane::load(Some(&dir)).expect("an older layout is migrated");
    assert_ne!(
        map_id(&dir, def::SERVIPS.name),
        servips,
        "SERVIPS made anew"
    );
    assert!(dp.tables.servips().is_empty(), "rebuilt by the next resync");
    assert_eq!(map_id(&dir, def::CONNTRACK.name), conntrack, "adopted");
    assert_eq!(
        dp.tables.layout().get(def::SERVIPS.name),
        Some(&def::SERVIPS.version)
    );
}

/// Pins of the release before layout versions were recorded (no `LAYOUT`)
/// hold version 1 of every map: adopted as they are.
#[test]
fn pins_without_a_layout_record_are_adopted() {
    let work = Workdir::new("layout-none");
    let dir = work.dir.join("bpf").join("n1");
    std::fs::create_dir_all(&dir).unwrap();
    first_load(&dir);
    std::fs::remove_file(dir.join(def::LAYOUT.name)).unwrap();
    let id = map_id(&dir, def::SERVIPS.name);
    // `overlay-ctl maps` reads such pins before the new agent ever ran.
    let old = Tables::open_pinned(&dir).expect("pins of the previous release open");
    assert_eq!(old.servips().len(), 1);
    assert!(old.layout().is_empty(), "no versions recorded yet");
    assert!(
        !dir.join(def::LAYOUT.name).exists(),
        "reading pins creates none"
    );

    let dp = Dataplane::load(Some(&dir)).expect("adopted");
    assert_eq!(map_id(&dir, def::SERVIPS.name), id);
    assert_eq!(dp.tables.servips().len(), 1);
    assert_eq!(
        dp.tables.layout().get(def::SERVIPS.name),
        Some(&def::SERVIPS.version)
    );
}
