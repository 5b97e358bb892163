//! The rows with a monitor attached: monitor slot 0's switch on for their
//! runs only (off for every other row), and a reader draining the slot's
//! ring on another thread, as `overlay-ctl monitor` would.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, ensure};
use aya::maps::{Map, MapData, MapInfo, RingBuf};
use overlay_common::events::Monitor;
use overlay_common::registry::def;
use overlay_ctl::dataplane::{Dataplane, Tables, programs};

/// The monitor slot the rows use.
const SLOT: u32 = 0;

/// Switches the slot on (`Some(rate)`, 0: every event) or off.
pub(super) fn switch(t: &mut Tables, rate: Option<u64>) -> anyhow::Result<()> {
    let m = match rate {
        // Never lapses during the runs; switched off explicitly.
        Some(rate) => Monitor::new(u64::MAX, rate, rate),
        None => Monitor::default(),
    };
    Ok(t.set_monitor(SLOT, &m)?)
}

/// A thread reading the slot's ring until stopped.
pub(super) struct Reader {
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    suppressed_before: u64,
}

impl Reader {
    /// Opens slot 0's ring of `dp` (by id: `Tables` keeps its own handle)
    /// and starts reading it.
    pub(super) fn start(dp: &mut Dataplane) -> anyhow::Result<Reader> {
        let info = dp.classifier(programs::FROM_INSTANCE)?.info()?;
        let name = def::EVENTS_0.name;
        let id = info
            .map_ids()?
            .unwrap_or_default()
            .into_iter()
            .find(|&id| MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some(name)))
            .with_context(|| format!("the from_instance program uses no {name} map"))?;
        let mut ring = RingBuf::try_from(Map::RingBuf(MapData::from_id(id)?))?;
        let (stop, read) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, r) = (stop.clone(), read.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                wait(&ring);
                while ring.next().is_some() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Reader {
            stop,
            read,
            thread: Some(thread),
            suppressed_before: dp.tables.suppressed(SLOT)?,
        })
    }

    /// Stops the reader and checks that each monitored run's event was
    /// either read or counted as suppressed.
    pub(super) fn finish(mut self, t: &Tables, monitored_runs: u64) -> anyhow::Result<()> {
        // What is in flight lands before the thread stops.
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
        let read = self.read.load(Ordering::Relaxed);
        let suppressed = t.suppressed(SLOT)? - self.suppressed_before;
        ensure!(
            read + suppressed == monitored_runs,
            "monitor rows: {read} events read + {suppressed} suppressed, expected {monitored_runs}"
        );
        eprintln!("bench: monitor rows: {read} events read, {suppressed} suppressed");
        Ok(())
    }
}

/// Waits up to 100 ms for the ring to have data.
fn wait(ring: &RingBuf<MapData>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(100u8));
}
