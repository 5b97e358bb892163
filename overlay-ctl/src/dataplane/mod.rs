//! The eBPF dataplane: the embedded object, loading, attaching and pinning.

mod batch;
pub mod layout;
mod links;
mod tables;

use std::path::{Path, PathBuf};

use aya::programs::{SchedClassifier, TcAttachType, Xdp, xdp::XdpMode};
use aya::{Ebpf, EbpfLoader};
use overlay_common::registry::{self, def};

pub use tables::{Lifetimes, Tables, Tracked, parse_event, tick_now, ticks as tables_ticks};

/// Reader of the programs' aya-log ring buffer, writing through the `log` facade.
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The eBPF object built by `overlay-build` (the same as `cargo xtask build-ebpf`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-ebpf.o"));

/// Program names inside [`OBJECT`].
pub mod programs {
    /// TC ingress on each instance's host-side veth.
    pub const FROM_INSTANCE: &str = "from_instance";
    /// TC ingress on the uplink: decapsulation and delivery.
    pub const UPLINK: &str = "uplink";
    /// XDP on the uplink: early drop of tunnel packets from unknown sources.
    pub const UPLINK_XDP: &str = "uplink_xdp";
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object failed")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    #[error("pinning {path}: {why}")]
    Pin { path: PathBuf, why: String },
    #[error("a slot table of {0} entries is larger than 65535")]
    TooManySlots(usize),
    #[error(
        "pinned map {path} has {what} {have}, this version needs {want}: the pins are from \
         another version of the dataplane; run `overlay-ctl agent --teardown` (open \
         connections through this node break) and start the agent again"
    )]
    Incompatible {
        path: PathBuf,
        what: &'static str,
        have: u32,
        want: u32,
    },
    #[error(
        "pinned map {path} has layout version {have}, this agent knows only up to {want}: the \
         pins are from a newer release; downgrading is not supported (run the newer agent, or \
         `overlay-ctl agent --teardown`, which breaks open connections through this node)"
    )]
    Downgrade { path: PathBuf, have: u32, want: u32 },
    #[error(
        "pinned map {path} has capacity {have} but `conntrack_entries` is {want}: set \
         `conntrack_entries = {have}` in agent.toml to keep the flows, or run `overlay-ctl agent \
         --teardown` first (open connections through this node break)"
    )]
    ConntrackSize { path: PathBuf, have: u32, want: u32 },
    #[error("pinned map {path} has layout version {from}, and no conversion to {to} exists")]
    NoConversion { path: PathBuf, from: u32, to: u32 },
    #[error(
        "cannot open pinned map {path}: {source} (is an agent running with this pin directory?)"
    )]
    Pinned {
        path: PathBuf,
        source: aya::maps::MapError,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A loaded copy of the dataplane.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Where maps and links are pinned; `None` for a throwaway copy (tests).
    pin_dir: Option<PathBuf>,
    /// Taken out of `ebpf`; kept here so the programs' map fds stay open.
    pub tables: Tables,
}

/// Map sizes a node may choose (entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// `CONNTRACK`: two entries per flow that this node started (LRU,
    /// preallocated: about 100 bytes per entry).
    pub conntrack: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            conntrack: overlay_common::registry::capacity::CONNTRACK,
        }
    }
}

/// Loads a program, again when the verifier was interrupted: it gives up
/// with `EAGAIN` when a signal arrives for the loading thread, and the
/// from-instance program takes it a good part of a second (libbpf retries
/// five times too).
fn with_retries(
    mut load: impl FnMut() -> std::result::Result<(), aya::programs::ProgramError>,
) -> std::result::Result<(), aya::programs::ProgramError> {
    let mut tries = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

impl Dataplane {
    /// Loads the object. With `pin_dir`, every map is pinned there by name and
    /// an already pinned map is reused, so a restarted agent adopts the state.
    pub fn load(pin_dir: Option<&Path>) -> Result<Self> {
        Self::load_sized(pin_dir, Sizes::default())
    }

    /// [`Dataplane::load`] with the node's map sizes.
    pub fn load_sized(pin_dir: Option<&Path>, sizes: Sizes) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(def::CONNTRACK.name, sizes.conntrack);
        let replaced = match pin_dir {
            Some(dir) => layout::replaced(dir, sizes)?,
            None => Vec::new(),
        };
        for d in registry::PINNED {
            let path = pin_dir.map(|dir| dir.join(d.name));
            match path {
                // A replaced map is created anew and pinned once it exists.
                Some(_) if replaced.iter().any(|r| r.def.name == d.name) => {}
                Some(path) => {
                    loader.map_pin_path(d.name, path);
                }
                None => {}
            }
        }
        let mut ebpf = loader.load(OBJECT)?;
        for r in &replaced {
            r.repin(&ebpf)?;
        }
        let mut tables = Tables::take(&mut ebpf)?;
        for r in replaced {
            r.migrate(&mut tables)?;
        }
        tables.record_layout()?;
        if let Some(dir) = pin_dir {
            let links = dir.join("links");
            std::fs::create_dir_all(&links).map_err(|e| Error::Pin {
                path: links,
                why: e.to_string(),
            })?;
        }
        Ok(Dataplane {
            ebpf,
            tables,
            pin_dir: pin_dir.map(Path::to_path_buf),
        })
    }

    /// How many decisions the programs' flow cache holds (`FLOW_CACHE`,
    /// a map of their own: not pinned, so only the loading process sees it).
    pub fn cached_flows(&self) -> Result<usize> {
        use overlay_common::maps::{CachedFlow, FlowKey};
        let name = overlay_common::registry::def::FLOW_CACHE.name;
        let map = self.ebpf.map(name).ok_or(Error::Missing(name))?;
        let cache = aya::maps::HashMap::<_, FlowKey, CachedFlow>::try_from(map)
            .map_err(|source| Error::Map { name, source })?;
        Ok(cache.keys().filter(|k| k.is_ok()).count())
    }

    /// The programs' log records (aya-log), to be forwarded by the agent.
    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// A TC program, loaded into the kernel (verified) and ready to attach or test-run.
    pub fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::Missing(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })?;
        if prog.fd().is_err() {
            with_retries(|| prog.load()).map_err(|source| Error::Program { name, source })?;
        }
        Ok(prog)
    }

    /// An XDP program, loaded and ready to attach or test-run.
    pub fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::Missing(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })?;
        if prog.fd().is_err() {
            with_retries(|| prog.load()).map_err(|source| Error::Program { name, source })?;
        }
        Ok(prog)
    }

    /// Pin path of the link of `hook` on `ifname`, when this copy pins.
    fn link_pin(&self, hook: &str, ifname: &str) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|d| d.join("links").join(format!("{hook}-{ifname}")))
    }

    fn attach_tc(&mut self, name: &'static str, ifname: &str) -> Result<()> {
        let pin = self.link_pin(name, ifname);
        let prog = self.classifier(name)?;
        match pin {
            Some(pin) => links::tc(prog, name, ifname, &pin),
            None => prog
                .attach(ifname, TcAttachType::Ingress)
                .map(drop)
                .map_err(|source| Error::Program { name, source }),
        }
    }

    /// Attaches the from-instance program to an instance's host-side veth (TCX ingress).
    pub fn attach_instance(&mut self, ifname: &str) -> Result<()> {
        self.attach_tc(programs::FROM_INSTANCE, ifname)
    }

    /// Detaches the from-instance program from `ifname` (its pin, if any).
    pub fn detach_instance(&mut self, ifname: &str) -> Result<()> {
        match self.link_pin(programs::FROM_INSTANCE, ifname) {
            Some(pin) => links::unpin(&pin),
            None => Ok(()),
        }
    }

    /// Attaches the uplink programs (XDP, then TCX ingress).
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<()> {
        self.attach_uplink_with(ifname, true)
    }

    /// Attaches the uplink's TCX ingress program, and its XDP program when
    /// `xdp` (else a pinned XDP attachment from an earlier run is removed).
    /// TC first: the XDP program hands TC packets it decapsulated, which
    /// only a TC program of the same release recognises.
    pub fn attach_uplink_with(&mut self, ifname: &str, xdp: bool) -> Result<()> {
        let name = programs::UPLINK_XDP;
        let pin = self.link_pin(name, ifname);
        if !xdp {
            if let Some(pin) = &pin {
                links::unpin(pin)?;
            }
            return self.attach_tc(programs::UPLINK, ifname);
        }
        self.attach_tc(programs::UPLINK, ifname)?;
        let prog = self.xdp(name)?;
        match pin {
            Some(pin) => links::xdp(prog, name, ifname, &pin)?,
            None => {
                prog.attach(ifname, XdpMode::default())
                    .map_err(|source| Error::Program { name, source })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use overlay_common::registry::{self, Shape};

    /// The compiled object holds exactly the registry's maps, each as
    /// declared: a map added on one side only fails here.
    #[test]
    fn the_object_holds_exactly_the_registry_maps() {
        let obj = aya_obj::Object::parse(super::OBJECT).expect("the embedded object parses");
        let found: Vec<(&str, Shape)> = obj
            .maps
            .iter()
            .map(|(name, m)| {
                let shape = Shape {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                };
                (name.as_str(), shape)
            })
            .collect();
        assert_eq!(
            registry::check_object(&found),
            Ok(()),
            "object maps: {found:?}"
        );
    }
}
