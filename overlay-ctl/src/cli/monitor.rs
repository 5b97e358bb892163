//! `overlay-ctl monitor`: the dataplane's events, live, from the ring
//! buffer of a monitor slot (see `overlay_common::events`).
//!
//! The monitor takes a free slot (a lock file held for its lifetime, so a
//! killed monitor frees it), opens the slot's switch with a deadline a few
//! seconds ahead and pushes it forward every second; on exit it closes the
//! switch, and if killed the deadline lapses on its own.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aya::maps::{Map, MapData, RingBuf};
use nix::fcntl::{Flock, FlockArg};
use overlay_common::events::{self, Event, Hook, Kind, MONITORS, Monitor};
use overlay_common::maps::ip;
use overlay_common::policy::Policy;
use overlay_common::stats::Reason;
use serde_json::{Value, json};

use crate::config::AgentConfig;
use crate::dataplane::{Tables, parse_event};
use crate::maps_view::NameIndex;

/// How often the monitor pushes its deadline forward.
const RENEW: Duration = Duration::from_secs(1);
/// Where the slot locks live (a lock is released when its holder dies).
const LOCK_DIR: &str = "/run/lock/overlay-monitor";

#[derive(clap::Args)]
pub struct MonitorArgs {
    /// Only events of this reason (`overlay-ctl maps stats` names:
    /// `drop_denied`, `new_flow`, `drop_spoofed`, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Only flows from or to this service (`app.appns.svc.svcns`, or its id).
    #[arg(long)]
    service: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Events per second and CPU the programs send this monitor, in bursts
    /// of up to one second's worth (0: every event).
    #[arg(long, default_value_t = events::DEFAULT_RATE)]
    rate: u64,
    /// Take the pin directory (and the names) from this agent configuration.
    #[arg(long, conflicts_with = "pin_dir")]
    config: Option<PathBuf>,
    /// Pin directory of the node's maps (ids only: no names).
    #[arg(long, env = "OVERLAY_PIN_DIR")]
    pin_dir: Option<PathBuf>,
}

/// What to show.
struct Filter {
    reason: Option<Reason>,
    service: Option<u32>,
}

impl Filter {
    fn keeps(&self, ev: &Event) -> bool {
        self.reason.is_none_or(|r| r as u32 == ev.reason)
            && self
                .service
                .is_none_or(|s| ev.src_service == s || ev.dst_service == s)
    }
}

/// The pin directory and, with `--config`, the agent's names.
pub fn pins(
    config: Option<&Path>,
    pin_dir: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, Option<NameIndex>)> {
    match (config, pin_dir) {
        (Some(c), _) => {
            let cfg = AgentConfig::load(c)?;
            Ok((cfg.bpf_pin_dir, NameIndex::load(&cfg.state_dir)))
        }
        (None, Some(d)) => Ok((d, None)),
        (None, None) => {
            bail!("give --pin-dir DIR or --config agent.toml (or set OVERLAY_PIN_DIR)")
        }
    }
}

fn parse_reason(label: &str) -> anyhow::Result<Reason> {
    Reason::ALL
        .iter()
        .copied()
        .find(|r| r.label() == label)
        .with_context(|| {
            let all: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
            format!("unknown reason `{label}`; one of: {}", all.join(", "))
        })
}

fn parse_service(name: &str, names: Option<&NameIndex>) -> anyhow::Result<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let Some(ix) = names else {
        bail!(
            "--service {name}: naming a service needs --config (the agent's names); \
             or give the service's id"
        );
    };
    ix.services
        .iter()
        .find(|(_, n)| n.as_str() == name)
        .map(|(id, _)| *id)
        .with_context(|| {
            let known: Vec<&str> = ix.services.values().map(String::as_str).collect();
            format!(
                "unknown service `{name}` on this node; known: {}",
                known.join(", ")
            )
        })
}

pub fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let reason = args.reason.as_deref().map(parse_reason).transpose()?;
    let (dir, names) = pins(args.config.as_deref(), args.pin_dir)?;
    let service = args
        .service
        .as_deref()
        .map(|s| parse_service(s, names.as_ref()))
        .transpose()?;
    let filter = Filter { reason, service };
    let mut tables = Tables::open_pinned(&dir)
        .with_context(|| format!("reading the maps pinned in {}", dir.display()))?;
    let (slot, _lock) = claim(&dir)?;
    let mut ring = open_ring(&dir, slot)?;
    let settings = |deadline| Monitor::new(deadline, args.rate, args.rate);
    let started = coarse_ns();
    tables.set_monitor(slot, &settings(started + events::LEASE_NS))?;
    stop_on_signals();
    let out = Printer {
        json: args.json,
        names: names.unwrap_or_default(),
        clock: wall_offset_ns(),
    };
    let result = watch(
        &mut tables,
        &mut ring,
        slot,
        &filter,
        &out,
        started,
        settings,
    );
    // Off at once rather than at the deadline.
    let _ = tables.set_monitor(slot, &Monitor::default());
    result
}

/// Prints the slot's events until a signal (or a closed stdout), renewing
/// the deadline every second and reporting what the programs held back.
fn watch(
    tables: &mut Tables,
    ring: &mut RingBuf<MapData>,
    slot: u32,
    filter: &Filter,
    out: &Printer,
    started: u64,
    settings: impl Fn(u64) -> Monitor,
) -> anyhow::Result<()> {
    let mut held_back = tables.suppressed(slot)?;
    let mut renewed = Instant::now();
    let mut stdout = std::io::stdout().lock();
    while !STOP.load(Ordering::Relaxed) {
        wait_readable(ring.as_fd(), Duration::from_millis(200));
        while let Some(item) = ring.next() {
            // A previous monitor of the slot may have left events behind.
            let Some(ev) = parse_event(&item).filter(|e| e.time_ns >= started) else {
                continue;
            };
            if filter.keeps(&ev) && writeln!(stdout, "{}", out.event(&ev)).is_err() {
                return Ok(());
            }
        }
        if renewed.elapsed() >= RENEW {
            renewed = Instant::now();
            tables.set_monitor(slot, &settings(coarse_ns() + events::LEASE_NS))?;
            let now = tables.suppressed(slot)?;
            if now > held_back && writeln!(stdout, "{}", out.suppressed(now - held_back)).is_err() {
                return Ok(());
            }
            held_back = now;
        }
        if stdout.flush().is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The first free slot, and its lock (held until the returned guard drops).
fn claim(pin_dir: &Path) -> anyhow::Result<(u32, Flock<File>)> {
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    let dir = std::fs::canonicalize(pin_dir).unwrap_or_else(|_| pin_dir.to_path_buf());
    let tag: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    for slot in 0..MONITORS {
        let path = Path::new(LOCK_DIR).join(format!("{tag}.{slot}"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            return Ok((slot, lock));
        }
    }
    bail!("{MONITORS} monitors already watch the dataplane pinned in {dir:?}: stop one first")
}

fn open_ring(pin_dir: &Path, slot: u32) -> anyhow::Result<RingBuf<MapData>> {
    let path = pin_dir.join(format!("EVENTS_{slot}"));
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is the agent of this release running?)",
            path.display()
        )
    })?;
    Ok(RingBuf::try_from(Map::RingBuf(data))?)
}

fn wait_readable(fd: std::os::fd::BorrowedFd, timeout: Duration) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE);
    // An interrupted or failed wait is one more round of the loop.
    let _ = poll(&mut fds, ms);
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C and `kill` end the loop, so that the switch is closed on the way out.
fn stop_on_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * events::NS_PER_S + ts.tv_nsec as u64
}

/// The programs' clock (`bpf_ktime_get_coarse_ns`).
fn coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Wall clock minus the programs' clock, to date events.
fn wall_offset_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME).saturating_sub(coarse_ns())
}

/// Turns events into lines.
struct Printer {
    json: bool,
    names: NameIndex,
    clock: u64,
}

impl Printer {
    fn event(&self, ev: &Event) -> String {
        let v = self.to_json(ev);
        if self.json {
            return v.to_string();
        }
        let text = |k: &str| match &v[k] {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut line = format!(
            "{} {:<18} {:<13} {:<4} {}:{} -> {}:{}",
            clock_text(ev.time_ns + self.clock),
            text("reason"),
            text("hook"),
            text("proto"),
            text("src"),
            text("sport"),
            text("dst"),
            text("dport"),
        );
        if ev.src_service != 0 || ev.dst_service != 0 {
            line += &format!(" {} -> {}", text("src_service"), text("dst_service"));
        }
        if ev.kind == Kind::NewFlow as u8 {
            line += &format!(
                " {} backend {} on {}",
                text("policy"),
                text("backend"),
                text("node")
            );
        }
        line
    }

    fn suppressed(&self, n: u64) -> String {
        match self.json {
            true => json!({ "suppressed": n }).to_string(),
            false => format!("-- {n} events suppressed (rate limit or full ring)"),
        }
    }

    fn to_json(&self, ev: &Event) -> Value {
        let addr = |a: u32| (a != 0).then(|| ip::from_wire(a).to_string());
        let service = |id: u32| name_or_id(&self.names.services, id);
        let new_flow = ev.kind == Kind::NewFlow as u8;
        json!({
            "time": (ev.time_ns + self.clock) as f64 / 1e9,
            "kind": Kind::from_code(ev.kind).map(Kind::label),
            "reason": Reason::from_index(ev.reason).map(Reason::label),
            "hook": Hook::from_code(ev.hook).map(Hook::label),
            "proto": proto(ev.proto),
            "src": addr(ev.saddr),
            "sport": ip::port_from_wire(ev.sport),
            "dst": addr(ev.daddr),
            "dport": ip::port_from_wire(ev.dport),
            "len": ev.len,
            "src_service": service(ev.src_service),
            "dst_service": service(ev.dst_service),
            "policy": Policy::from_code(ev.policy).map(Policy::as_str),
            "backend": if new_flow { addr(ev.backend) } else { None },
            "node": if new_flow { name_or_id(&self.names.nodes, ev.node) } else { Value::Null },
        })
    }
}

fn name_or_id(names: &BTreeMap<u32, String>, id: u32) -> Value {
    match (id, names.get(&id)) {
        (0, _) => Value::Null,
        (_, Some(n)) => json!(n),
        (_, None) => json!(id),
    }
}

fn proto(p: u8) -> Value {
    match p {
        0 => Value::Null,
        overlay_common::IPPROTO_TCP => json!("tcp"),
        overlay_common::IPPROTO_UDP => json!("udp"),
        overlay_common::IPPROTO_ICMP => json!("icmp"),
        other => json!(other),
    }
}

/// `HH:MM:SS.mmm` (UTC) of a wall-clock time in ns.
fn clock_text(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn reasons_and_services_resolve_or_say_why() {
        assert_eq!(parse_reason("drop_denied").unwrap(), Reason::DropDenied);
        let e = parse_reason("denied").unwrap_err().to_string();
        assert!(
            e.contains("unknown reason `denied`") && e.contains("drop_denied"),
            "{e}"
        );
        let ix = NameIndex {
            services: BTreeMap::from([(7, "demo.prod.web.v1".to_string())]),
            ..Default::default()
        };
        assert_eq!(parse_service("demo.prod.web.v1", Some(&ix)).unwrap(), 7);
        assert_eq!(parse_service("9", None).unwrap(), 9);
        let e = parse_service("demo.prod.x.v1", Some(&ix)).unwrap_err();
        assert!(e.to_string().contains("known: demo.prod.web.v1"), "{e}");
        assert!(parse_service("demo.prod.x.v1", None).is_err());
    }

    #[test]
    fn an_event_prints_with_names() {
        let p = Printer {
            json: false,
            names: NameIndex {
                services: BTreeMap::from([(1, "a".into()), (2, "b".into())]),
                nodes: BTreeMap::from([(3, "n3".into())]),
                ..Default::default()
            },
            clock: 0,
        };
        let ev = Event {
            time_ns: 3_723_004_000_000,
            kind: Kind::NewFlow as u8,
            hook: Hook::FromInstance as u8,
            proto: overlay_common::IPPROTO_TCP,
            policy: Policy::Closest.code(),
            reason: Reason::NewFlow as u32,
            saddr: ip::to_wire(Ipv4Addr::new(10, 30, 1, 2)),
            daddr: ip::to_wire(Ipv4Addr::new(10, 96, 0, 1)),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            src_service: 1,
            dst_service: 2,
            backend: ip::to_wire(Ipv4Addr::new(10, 30, 3, 5)),
            node: 3,
            len: 60,
        };
        assert_eq!(
            p.event(&ev)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            "01:02:03.004 new_flow from_instance tcp 10.30.1.2:40000 -> 10.96.0.1:80 a -> b \
             closest backend 10.30.3.5 on n3"
        );
        let v = p.to_json(&ev);
        assert_eq!(
            (v["node"].as_str(), v["sport"].as_u64()),
            (Some("n3"), Some(40000))
        );
    }
}
