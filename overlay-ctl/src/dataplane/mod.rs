//! The eBPF dataplane: the embedded object, loading, attaching and pinning.

mod batch;
mod links;
mod tables;

use std::path::{Path, PathBuf};

use aya::programs::{SchedClassifier, TcAttachType, Xdp, xdp::XdpMode};
use aya::{Ebpf, EbpfLoader};
use overlay_common::maps::names;

pub use tables::{Tables, tick_now};

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
            conntrack: overlay_common::maps::capacity::CONNTRACK,
        }
    }
}

/// Refuses pins whose layout differs from this object's maps (left by an
/// older or newer agent, or sized differently): adopting them would make the
/// verifier reject the programs, or worse, let them misread the maps.
fn check_pins(paths: &[(&str, PathBuf)], sizes: Sizes) -> Result<()> {
    if !paths.iter().any(|(_, p)| p.exists()) {
        return Ok(());
    }
    let obj = aya_obj::Object::parse(OBJECT).map_err(|e| Error::Pin {
        path: PathBuf::from("overlay-ebpf.o"),
        why: e.to_string(),
    })?;
    for (name, path) in paths.iter().filter(|(_, p)| p.exists()) {
        let Some(want) = obj.maps.get(*name) else {
            continue;
        };
        let info = aya::maps::MapData::from_pin(path)
            .and_then(|m| m.info())
            .map_err(|source| Error::Pinned {
                path: path.clone(),
                source,
            })?;
        let sizes = [
            (
                "type",
                info.map_type().map_or(u32::MAX, |t| t as u32),
                want.map_type(),
            ),
            ("key size", info.key_size(), want.key_size()),
            ("value size", info.value_size(), want.value_size()),
            (
                "capacity",
                info.max_entries(),
                match *name {
                    names::CONNTRACK => sizes.conntrack,
                    _ => want.max_entries(),
                },
            ),
        ];
        if let Some((what, have, want)) = sizes.into_iter().find(|(_, h, w)| h != w) {
            return Err(Error::Incompatible {
                path: path.clone(),
                what,
                have,
                want,
            });
        }
    }
    Ok(())
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
        loader.map_max_entries(names::CONNTRACK, sizes.conntrack);
        let paths: Vec<(&str, PathBuf)> = pin_dir
            .map(|d| names::ALL.iter().map(|n| (*n, d.join(n))).collect())
            .unwrap_or_default();
        check_pins(&paths, sizes)?;
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        let tables = Tables::take(&mut ebpf)?;
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
            prog.load()
                .map_err(|source| Error::Program { name, source })?;
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
            prog.load()
                .map_err(|source| Error::Program { name, source })?;
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
    pub fn attach_uplink_with(&mut self, ifname: &str, xdp: bool) -> Result<()> {
        let name = programs::UPLINK_XDP;
        let pin = self.link_pin(name, ifname);
        if !xdp {
            if let Some(pin) = &pin {
                links::unpin(pin)?;
            }
            return self.attach_tc(programs::UPLINK, ifname);
        }
        let prog = self.xdp(name)?;
        match pin {
            Some(pin) => links::xdp(prog, name, ifname, &pin)?,
            None => {
                prog.attach(ifname, XdpMode::default())
                    .map_err(|source| Error::Program { name, source })?;
            }
        }
        self.attach_tc(programs::UPLINK, ifname)
    }
}
