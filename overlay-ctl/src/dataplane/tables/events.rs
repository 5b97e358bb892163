//! The monitor slots: their switches, rate limits and ring buffers (see
//! `overlay_common::events`).

use aya::maps::{MapData, RingBuf};
use overlay_common::events::{Event, MONITORS, Monitor};
use overlay_common::registry::def;

use super::{Result, Tables, map_err};

impl Tables {
    /// Sets monitor slot `slot`'s switch and rate (the other slots as read).
    pub fn set_monitor(&mut self, slot: u32, m: &Monitor) -> Result<()> {
        let mut all = self.monitor.get(&0, 0).map_err(map_err(&def::MONITOR))?;
        if let Some(s) = all.slots.get_mut(slot as usize) {
            *s = *m;
        }
        self.monitor.set(0, all, 0).map_err(map_err(&def::MONITOR))
    }

    /// Monitor slot `slot`'s switch and rate.
    pub fn monitor(&self, slot: u32) -> Result<Monitor> {
        let all = self.monitor.get(&0, 0).map_err(map_err(&def::MONITOR))?;
        Ok(all.slots.get(slot as usize).copied().unwrap_or_default())
    }

    /// Events the programs held back from slot `slot` so far, over all CPUs.
    pub fn suppressed(&self, slot: u32) -> Result<u64> {
        let per_cpu = self.limiter.get(&slot, 0).map_err(map_err(&def::LIMITER))?;
        Ok(per_cpu.iter().map(|l| l.suppressed).sum())
    }

    /// The ring buffer of slot `slot` (`None` past the last slot).
    pub fn events(&mut self, slot: u32) -> Option<&mut RingBuf<MapData>> {
        match slot {
            0 => Some(&mut self.events_0),
            1 => Some(&mut self.events_1),
            2 => Some(&mut self.events_2),
            3 => Some(&mut self.events_3),
            _ => None,
        }
    }
}

/// An event as the programs wrote it, from a ring buffer record.
pub fn parse_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: `Event` is plain integers (`aya::Pod`); the length is checked
    // above and the read is unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

const _: () = assert!(MONITORS == 4, "Tables::events names every slot's ring");
