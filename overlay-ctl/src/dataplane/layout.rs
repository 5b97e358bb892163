//! Which pinned maps an agent may adopt, and what it does with the others.
//!
//! Every map of the registry has a layout version. The agent records the
//! versions of the maps it pins in the pinned `LAYOUT` map; pins without that
//! record come from the release before versions were kept, whose layouts are
//! version 1. On start, for each pinned map:
//!
//! * same version and layout: adopted as it is (the common restart);
//! * an older version: migrated. The agent creates the map anew; entries are
//!   carried over where the map says so ([`Migration::Carry`], converted
//!   entry by entry), counters start again from zero, and the maps the agent
//!   fills from the desired state are filled again by its first resync;
//! * a newer version: refused (a downgrade), with a message saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData};
use overlay_common::maps::Layout;
use overlay_common::registry::{self, MapDef, def};

use super::{Error, Result, Sizes};

/// What a newer agent does with a pinned map of an older layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migration {
    /// Created anew and filled again from the desired state.
    Rebuild,
    /// Created anew with its entries carried over (the flows in conntrack).
    Carry,
    /// Created anew, empty: counters and caches.
    Reset,
}

/// How each map migrates.
pub fn migration(d: &MapDef) -> Migration {
    match d.name {
        n if n == def::CONNTRACK.name => Migration::Carry,
        n if [def::STATS.name, def::DENIED.name, def::TURNS.name].contains(&n) => Migration::Reset,
        _ => Migration::Rebuild,
    }
}

/// A pinned map of an older layout, replaced by a new one at load.
pub struct Replaced {
    pub def: &'static MapDef,
    pub path: PathBuf,
    pub from: u32,
    /// The old map, kept open so that its entries can be carried over.
    old: MapData,
}

/// The maps pinned under `dir` that this agent replaces, after checking
/// that it can adopt all others (maps without a pin are created and pinned
/// by the loader).
pub fn replaced(dir: &Path, sizes: Sizes) -> Result<Vec<Replaced>> {
    let versions = pinned_versions(dir)?;
    let mut out = Vec::new();
    for d in registry::PINNED {
        let path = dir.join(d.name);
        if !path.exists() {
            continue;
        }
        let have = versions.get(d.name).copied().unwrap_or(1);
        if have > d.version {
            return Err(Error::Downgrade {
                path,
                have,
                want: d.version,
            });
        }
        if have == d.version {
            check(d, &path, sizes)?;
            continue;
        }
        if migration(d) == Migration::Carry && conversion(d, have).is_none() {
            return Err(Error::NoConversion {
                path,
                from: have,
                to: d.version,
            });
        }
        let old = MapData::from_pin(&path).map_err(|source| Error::Pinned {
            path: path.clone(),
            source,
        })?;
        out.push(Replaced {
            def: d,
            path,
            from: have,
            old,
        });
    }
    Ok(out)
}

impl Replaced {
    /// Pins the new map of the loaded object where the old one was pinned.
    pub fn repin(&self, ebpf: &aya::Ebpf) -> Result<()> {
        let why = |e: &dyn std::fmt::Display| Error::Pin {
            path: self.path.clone(),
            why: e.to_string(),
        };
        let map = ebpf
            .map(self.def.name)
            .ok_or(Error::Missing(self.def.name))?;
        std::fs::remove_file(&self.path).map_err(|e| why(&e))?;
        map.pin(&self.path).map_err(|e| why(&e))
    }

    /// Carries the old map's entries into the new one where the map says so.
    pub fn migrate(self, tables: &mut super::Tables) -> Result<()> {
        let how = migration(self.def);
        let carried = match (how, conversion(self.def, self.from)) {
            (Migration::Carry, Some(convert)) => convert(self.old, tables)?,
            _ => 0,
        };
        tracing::info!(
            map = self.def.name,
            from = self.from,
            to = self.def.version,
            ?how,
            carried,
            "pinned map migrated to the new layout"
        );
        Ok(())
    }
}

/// Copies a map's entries from an older layout into the new map; gives the
/// number of entries carried over.
type Convert = fn(MapData, &mut super::Tables) -> Result<usize>;

/// The conversion of `d`'s entries from layout version `from` to the
/// current one. Every map that carries its entries has one for each older
/// version (checked by a test).
pub fn conversion(d: &MapDef, from: u32) -> Option<Convert> {
    match from {
        1 if d.name == def::CONNTRACK.name => Some(conntrack_from_v1),
        _ => None,
    }
}

/// `CONNTRACK` version 1 was one LRU of every flow, whose `state` byte was
/// padding (zero, `ct::OPEN`). Its flows were passing packets: each is
/// carried into the confirmed table, so no established flow is lost.
fn conntrack_from_v1(old: MapData, t: &mut super::Tables) -> Result<usize> {
    use overlay_common::maps::{CtEntry, CtKey};
    let name = def::CONNTRACK.name;
    let old: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(aya::maps::Map::LruHashMap(old))
        .map_err(|source| Error::Map { name, source })?;
    let mut carried = 0;
    for (k, v) in old.iter().filter_map(|r| r.ok()) {
        t.carry_confirmed(k, v)?;
        carried += 1;
    }
    Ok(carried)
}

/// The versions recorded in the pinned `LAYOUT` map (empty when there is none).
fn pinned_versions(dir: &Path) -> Result<BTreeMap<String, u32>> {
    let path = dir.join(def::LAYOUT.name);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let data = MapData::from_pin(&path).map_err(|source| Error::Pinned {
        path: path.clone(),
        source,
    })?;
    let map: HashMap<MapData, Layout, u32> = HashMap::try_from(aya::maps::Map::HashMap(data))
        .map_err(|source| Error::Map {
            name: def::LAYOUT.name,
            source,
        })?;
    Ok(map
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| (k.as_str().to_string(), v))
        .collect())
}

/// The pinned map at `path` has the kind, sizes and capacity of `d`.
fn check(d: &MapDef, path: &PathBuf, sizes: Sizes) -> Result<()> {
    let info = MapData::from_pin(path)
        .and_then(|m| m.info())
        .map_err(|source| Error::Pinned {
            path: path.clone(),
            source,
        })?;
    let capacity = match d.name {
        n if n == def::CONNTRACK.name => sizes.conntrack,
        _ => d.max_entries,
    };
    let found = [
        (
            "type",
            info.map_type().map_or(u32::MAX, |t| t as u32),
            d.kind as u32,
        ),
        ("key size", info.key_size(), d.key_size),
        ("value size", info.value_size(), d.value_size),
        ("capacity", info.max_entries(), capacity),
    ];
    match found.into_iter().find(|(_, h, w)| h != w) {
        Some(("capacity", have, want)) if d.name == def::CONNTRACK.name => {
            Err(Error::ConntrackSize {
                path: path.clone(),
                have,
                want,
            })
        }
        Some((what, have, want)) => Err(Error::Incompatible {
            path: path.clone(),
            what,
            have,
            want,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map that carries its entries must be convertible from every
    /// older layout, or an upgrade would lose them.
    #[test]
    fn every_carried_map_converts_from_every_older_version() {
        for d in registry::PINNED {
            if migration(d) == Migration::Carry {
                for from in 1..d.version {
                    assert!(conversion(d, from).is_some(), "{} from v{from}", d.name);
                }
            }
        }
    }
}
