//! `/metrics`: the node's dataplane and agent in the Prometheus text format.
//!
//! Everything is read at scrape time: the counters from the pinned maps
//! (through the agent's own read-only handle, so a scrape takes none of the
//! map writers' locks), the RTTs and reconcile failures from the agent's
//! state. Names carry one `overlay_` prefix; counters end in `_total`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};

use crate::agent::Agent;
use crate::dataplane::Tables;

/// Registers a counter family `name` (ending in `_total`) with `labels`.
fn counters(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let family = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
    reg.register(Box::new(family.clone()))
        .expect("registered once");
    family
}

/// Registers a gauge family `name` with `labels`.
fn gauges(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let family = GaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge");
    reg.register(Box::new(family.clone()))
        .expect("registered once");
    family
}

/// The exposition of `agent`'s node. Reads whole maps: call it off the
/// async workers (`spawn_blocking`).
pub fn render(agent: &Agent, maps: &Tables) -> String {
    let reg = Registry::new_custom(Some("overlay".into()), None).expect("a valid prefix");
    dataplane(&reg, agent, maps);
    agent_state(&reg, agent);
    let mut out = Vec::new();
    // Writing into memory cannot fail.
    let _ = TextEncoder::new().encode(&reg.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Packets and bytes per verdict, new, denied and active flows per service, map fill.
fn dataplane(reg: &Registry, agent: &Agent, maps: &Tables) {
    let by_reason = ["reason"];
    let packets = counters(
        reg,
        "packets_total",
        "Packets the programs judged, by verdict or drop reason",
        &by_reason,
    );
    let bytes = counters(
        reg,
        "bytes_total",
        "Bytes of the packets the programs judged, by verdict or drop reason",
        &by_reason,
    );
    for (reason, c) in maps.stats().unwrap_or_default() {
        packets
            .with_label_values(&[reason.label()])
            .inc_by(c.packets);
        bytes.with_label_values(&[reason.label()]).inc_by(c.bytes);
    }
    let names = service_names(agent);
    let name = |id: u32| {
        names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("service-{id}"))
    };
    let denied = counters(
        reg,
        "flows_denied_total",
        "New flows a service's needs did not allow",
        &["service"],
    );
    for (svc, n) in maps.denied() {
        denied.with_label_values(&[&name(svc)]).inc_by(n);
    }
    let new = counters(
        reg,
        "flows_new_total",
        "New flows this node opened to each service (a backend chosen)",
        &["service"],
    );
    for (svc, n) in maps.new_flows() {
        new.with_label_values(&[&name(svc)]).inc_by(n);
    }
    let active = gauges(
        reg,
        "flows_active",
        "Flows this node has open toward each service's backends (used within the load window)",
        &["service"],
    );
    let window = crate::agent::window_ticks(agent.cfg.load_window_s);
    let of_backend = backend_services(agent);
    let mut per_service: BTreeMap<String, f64> = BTreeMap::new();
    for (nsip, n) in maps.active_flows(window) {
        let svc = of_backend
            .get(&nsip)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        *per_service.entry(svc).or_default() += n as f64;
    }
    for (svc, n) in per_service {
        active.with_label_values(&[&svc]).set(n);
    }
    let entries = gauges(
        reg,
        "map_entries",
        "Entries of the dataplane's maps",
        &["map"],
    );
    let capacity = gauges(
        reg,
        "map_capacity",
        "Capacity of the dataplane's maps (entries)",
        &["map"],
    );
    for (map, n) in maps.fill() {
        entries.with_label_values(&[map.name]).set(n as f64);
        let cap = match map.name {
            n if n == overlay_common::registry::def::CONNTRACK.name => agent.cfg.conntrack_entries,
            _ => map.max_entries,
        };
        capacity.with_label_values(&[map.name]).set(cap as f64);
    }
}

/// Peer RTTs, lapsed peers, reconcile failures.
fn agent_state(reg: &Registry, agent: &Agent) {
    let (failing, total) = agent.failures();
    if let Some(h) = &agent.store_health {
        use std::sync::atomic::Ordering::Relaxed;
        let none: [&str; 0] = [];
        let connected = h.connected.load(Relaxed) as u8 as f64;
        gauges(
            reg,
            "store_connected",
            "Whether the agent's watch on the store is established",
            &none,
        )
        .with_label_values(&none)
        .set(connected);
        gauges(
            reg,
            "store_revision",
            "The store revision the agent's desired state is at",
            &none,
        )
        .with_label_values(&none)
        .set(h.revision.load(Relaxed) as f64);
        if let Some(lag) = h.lag() {
            gauges(
                reg,
                "store_watch_lag_seconds",
                "Time since the store last confirmed that the agent's desired state was current",
                &none,
            )
            .with_label_values(&none)
            .set(lag.as_secs_f64());
        }
    }
    let dns = counters(
        reg,
        "dns_queries_total",
        "Queries the node's DNS server (.local names, unicast) answered, by result",
        &["result"],
    );
    for (result, n) in agent.dns_counts() {
        dns.with_label_values(&[&result]).inc_by(n);
    }
    let rtt = gauges(
        reg,
        "peer_rtt_seconds",
        "Smoothed RTT of the probes to each peer node",
        &["peer"],
    );
    let sent = counters(
        reg,
        "probes_sent_total",
        "RTT probes sent to each peer",
        &["peer"],
    );
    let answered = counters(
        reg,
        "probes_answered_total",
        "RTT probes to each peer whose echo came back in time (loss: sent minus answered)",
        &["peer"],
    );
    let lapsed = gauges(
        reg,
        "peer_lapsed",
        "Peers kept after their registration lapsed, as they still answer probes",
        &["peer"],
    );
    {
        let st = agent.state();
        for (peer, us) in &st.metrics.rtt {
            rtt.with_label_values(&[peer]).set(*us as f64 / 1e6);
        }
        for (peer, c) in &st.metrics.probes {
            sent.with_label_values(&[peer]).inc_by(c.sent);
            answered.with_label_values(&[peer]).inc_by(c.answered);
        }
        for peer in st.lapsed.keys() {
            lapsed.with_label_values(&[peer]).set(1.0);
        }
    }
    let none: [&str; 0] = [];
    gauges(
        reg,
        "reconcile_failing_entries",
        "Map entries the last reconciliation could not apply",
        &none,
    )
    .with_label_values(&none)
    .set(failing.len() as f64);
    counters(
        reg,
        "reconcile_failures_total",
        "Map entry failures that started since the agent did",
        &none,
    )
    .with_label_values(&none)
    .inc_by(total);
    let passes = agent.passes();
    counters(
        reg,
        "reconcile_passes_total",
        "Passes that brought the maps to the desired state",
        &none,
    )
    .with_label_values(&none)
    .inc_by(passes.count);
    let seconds = prometheus::Counter::with_opts(Opts::new(
        "reconcile_seconds_total",
        "Time spent in reconcile passes",
    ))
    .expect("a valid counter");
    seconds.inc_by(passes.seconds);
    reg.register(Box::new(seconds)).expect("registered once");
}

/// Service id → name, from the desired state.
fn service_names(agent: &Agent) -> BTreeMap<u32, String> {
    let st = agent.state();
    st.cluster
        .services
        .iter()
        .map(|s| (s.id, s.name.clone()))
        .collect()
}

/// Backend NamespaceIP → its service's name.
fn backend_services(agent: &Agent) -> BTreeMap<Ipv4Addr, String> {
    let st = agent.state();
    let mut out: BTreeMap<Ipv4Addr, String> = st
        .cluster
        .instances
        .iter()
        .map(|i| (i.nsip, i.service.clone()))
        .collect();
    out.extend(st.instances.values().map(|i| (i.nsip, i.service.clone())));
    out
}
