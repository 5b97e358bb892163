//! RTT probes to the other nodes over the East-West port.
//!
//! A [`Prober`] owns a UDP socket on the node's own address and EWP, the
//! port tunnelled traffic arrives on, so that the probes take the path the
//! tunnel takes. Every interval it sends each peer a probe; the peer's
//! prober answers with an echo, and the time until the echo arrives is one
//! RTT sample, smoothed per peer. Probes and echoes carry a MAC made with
//! the cluster key ([`wire`]), so only members of the cluster are answered
//! and measured; each probe counts once, so a replayed echo does not.
//!
//! A peer that has not answered for [`STALE_INTERVALS`] intervals is left
//! out of [`Prober::rtts`]: its distance is unknown. Its smoothed RTT is
//! kept, so that one late echo brings it back.

mod state;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};

use state::Peers;
pub use state::ProbeCounts;
use wire::{Kind, Message};

pub use wire::{PROBE_LEN, PROBE_MAGIC};

/// How often each peer is probed unless configured otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// A peer without an echo for this many intervals is not reported.
pub const STALE_INTERVALS: u32 = 5;
/// How often an agent reads the cluster's probe keys (a rotation is seen
/// within this time).
pub const KEY_REFRESH: Duration = Duration::from_secs(5);

/// What a [`Prober`] needs to run.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// This node's dataplane id, the sender id of its probes and echoes.
    pub node_id: u32,
    /// This node's address and EWP; the socket binds exactly this.
    pub bind: SocketAddrV4,
    /// The cluster-wide secret (see [`generate_key`]).
    pub key: [u8; 32],
    /// How often each peer is probed.
    pub interval: Duration,
    /// Test knob: how long to wait before answering a probe (zero in
    /// production). Makes this node look farther away, as the test kernel
    /// has no netem.
    pub echo_delay: Duration,
}

/// A node to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its name, the key of [`Prober::rtts`].
    pub name: String,
    /// Its dataplane id, which its echoes carry.
    pub node_id: u32,
    /// Its address and EWP (the NAT-mapped one if it has one).
    pub addr: SocketAddrV4,
}

/// The smoothed RTT to one peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rtt {
    /// Smoothed RTT in microseconds.
    pub srtt_us: u32,
    /// Number of samples taken in.
    pub samples: u32,
    /// When the latest echo arrived.
    pub last_sample: Instant,
}

/// Why a [`Prober`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe socket could not be bound (address not on this node, port
    /// in use, ...).
    #[error("binding the probe socket to {addr}: {source}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddrV4,
        /// Why it failed.
        source: io::Error,
    },
    /// A zero interval would send probes in a busy loop.
    #[error("the probe interval must be greater than zero")]
    ZeroInterval,
}

/// A new random cluster key.
pub fn generate_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .expect("the system's random number generator failed");
    key
}

/// A running prober; dropping it (or [`Prober::stop`]) stops its tasks.
pub struct Prober {
    shared: Arc<Shared>,
    tasks: [JoinHandle<()>; 2],
}

/// What the prober's tasks and its handle share.
struct Shared {
    socket: UdpSocket,
    local: SocketAddrV4,
    node_id: u32,
    /// The key probes and echoes are signed with, and the keys accepted
    /// (during a rotation: the current, the next and the previous one).
    /// A std lock: held for a MAC, never across an `.await`.
    keys: std::sync::RwLock<Keys>,
    interval: Duration,
    echo_delay: Duration,
    /// Zero of the clock whose readings the probes carry.
    epoch: Instant,
    peers: Mutex<Peers>,
    dropped: AtomicU64,
    /// Where each peer's probes came from (node id → address and port), as
    /// this node sees them: behind NAT, its public mapping.
    observed: std::sync::Mutex<BTreeMap<u32, SocketAddrV4>>,
}

impl Prober {
    /// Binds the socket and starts probing (nobody until
    /// [`Prober::set_peers`]) and answering probes. Must run inside a Tokio
    /// runtime, in the network namespace of `cfg.bind`.
    pub async fn start(cfg: ProbeConfig) -> Result<Prober, ProbeError> {
        if cfg.interval.is_zero() {
            return Err(ProbeError::ZeroInterval);
        }
        let bind_error = |source| ProbeError::Bind {
            addr: cfg.bind,
            source,
        };
        let socket = UdpSocket::bind(cfg.bind).await.map_err(bind_error)?;
        // Port 0 in `bind` means any port: report the one the kernel chose.
        let port = socket.local_addr().map_err(bind_error)?.port();
        let shared = Arc::new(Shared {
            socket,
            local: SocketAddrV4::new(*cfg.bind.ip(), port),
            node_id: cfg.node_id,
            keys: std::sync::RwLock::new(Keys::new(&cfg.key, &[])),
            interval: cfg.interval,
            echo_delay: cfg.echo_delay,
            epoch: Instant::now(),
            peers: Mutex::default(),
            dropped: AtomicU64::new(0),
            observed: Default::default(),
        });
        let tasks = [
            tokio::spawn(send_loop(shared.clone())),
            tokio::spawn(receive_loop(shared.clone())),
        ];
        tracing::debug!("probing from {} as node {}", shared.local, cfg.node_id);
        Ok(Prober { shared, tasks })
    }

    /// Replaces the set of peers. Removed peers and their measurements are
    /// forgotten; this node itself, if listed, is left out.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        let own = self.shared.node_id;
        let peers = peers.into_iter().filter(|p| p.node_id != own).collect();
        self.shared.peers().set(peers);
    }

    /// Signs with `sign` from now on, and accepts it and every one of
    /// `accept` (a key rotation in progress).
    pub fn set_keys(&self, sign: &[u8; 32], accept: &[[u8; 32]]) {
        *self
            .shared
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Keys::new(sign, accept);
    }

    /// The RTTs of the peers that answered recently, by peer name.
    pub fn rtts(&self) -> BTreeMap<String, Rtt> {
        let max_age = self.shared.interval * STALE_INTERVALS;
        self.shared.peers().fresh(Instant::now(), max_age)
    }

    /// Probes sent to each peer and echoes taken back, by peer name.
    pub fn counts(&self) -> BTreeMap<String, ProbeCounts> {
        self.shared.peers().counts()
    }

    /// The address and port each peer's probes come from, by its node id
    /// (authenticated probes only): what a NAT in between maps it to.
    pub fn observed(&self) -> BTreeMap<u32, SocketAddrV4> {
        self.shared
            .observed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.shared.local
    }

    /// How many received datagrams were not used: malformed, failing the
    /// MAC, claiming to come from this node, or echoes of no outstanding
    /// probe.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Stops sending and answering; the socket closes once the tasks end.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("node_id", &self.shared.node_id)
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}

/// The probe keys of one moment.
struct Keys {
    sign: hmac::Key,
    accept: Vec<hmac::Key>,
}

impl Keys {
    fn new(sign: &[u8; 32], more: &[[u8; 32]]) -> Keys {
        let mut accept = vec![wire::mac_key(sign)];
        accept.extend(more.iter().filter(|k| *k != sign).map(|k| wire::mac_key(k)));
        Keys {
            sign: wire::mac_key(sign),
            accept,
        }
    }
}

impl Shared {
    fn encode(&self, kind: Kind, seq: u32, t_ns: u64) -> [u8; PROBE_LEN] {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        wire::encode(kind, self.node_id, seq, t_ns, &keys.sign)
    }

    /// The message, if one of the accepted keys signed it.
    fn decode(&self, buf: &[u8]) -> Result<Message, wire::WireError> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let mut result = wire::decode(buf, &keys.accept[0]);
        for key in &keys.accept[1..] {
            if result.is_ok() {
                break;
            }
            result = wire::decode(buf, key);
        }
        result
    }

    /// Nothing panics while holding the lock, but a poisoned table is still
    /// consistent enough to measure with.
    fn peers(&self) -> MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn clock_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn reject(&self, from: SocketAddr, why: &dyn fmt::Display) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("probe: dropped datagram from {from}: {why}");
    }

    async fn send(&self, datagram: &[u8; PROBE_LEN], to: SocketAddrV4) {
        if let Err(e) = self.socket.send_to(datagram, to).await {
            tracing::debug!("probe: sending to {to}: {e}");
        }
    }
}

/// Probes every peer once per interval.
async fn send_loop(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.interval);
    // After a stall, carry on at the normal pace rather than in a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let round = shared.peers().next_round(now);
        let t_ns = shared.clock_ns(now);
        for (addr, seq) in round {
            let probe = shared.encode(Kind::Probe, seq, t_ns);
            shared.send(&probe, addr).await;
        }
    }
}

/// Answers probes and takes in echoes until aborted.
async fn receive_loop(shared: Arc<Shared>) {
    // One byte more than a probe, so that a longer datagram is seen to be
    // too long rather than cut to a valid length.
    let mut buf = [0u8; PROBE_LEN + 1];
    // Delayed echoes; dropped, and so aborted, with this task.
    let mut echoes = JoinSet::new();
    loop {
        let (len, from) = match shared.socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!("probe: receiving: {e}");
                // Do not spin should the error persist.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while echoes.try_join_next().is_some() {}
        let SocketAddr::V4(from_v4) = from else {
            shared.reject(from, &"not IPv4");
            continue;
        };
        match shared.decode(&buf[..len]) {
            Ok(msg) if msg.sender == shared.node_id => shared.reject(from, &"our own node id"),
            Ok(msg) if msg.kind == Kind::Probe => answer(&shared, &msg, from_v4, &mut echoes).await,
            Ok(msg) => take_echo(&shared, &msg, from_v4),
            Err(e) => shared.reject(from, &e),
        }
    }
}

/// Echoes a probe back to its sender, after the configured delay, and
/// notes where it came from.
async fn answer(shared: &Arc<Shared>, probe: &Message, to: SocketAddrV4, echoes: &mut JoinSet<()>) {
    shared
        .observed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(probe.sender, to);
    let echo = shared.encode(Kind::Echo, probe.seq, probe.t_ns);
    if shared.echo_delay.is_zero() {
        shared.send(&echo, to).await;
        return;
    }
    let shared = shared.clone();
    echoes.spawn(async move {
        tokio::time::sleep(shared.echo_delay).await;
        shared.send(&echo, to).await;
    });
}

fn take_echo(shared: &Shared, echo: &Message, from: SocketAddrV4) {
    let taken = shared
        .peers()
        .echo(echo.sender, from, echo.seq, Instant::now());
    match taken {
        Ok(rtt) => tracing::trace!("probe: {from}: srtt {} us", rtt.srtt_us),
        Err(why) => shared.reject(from.into(), &why),
    }
}
