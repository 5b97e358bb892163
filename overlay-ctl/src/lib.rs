//! EdgeIO overlay: node agent, orchestrator commands and operator CLI.
//!
//! Module map:
//!
//! * [`model`]: the desired state: nodes, services with ServIPs, instances.
//! * [`descriptor`]: the deployment descriptor and the service record.
//! * [`config`]: the agent's `agent.toml`.
//! * [`health`]: instance health: readiness, ejection, draining.
//! * [`balance`]: the balancing policies: distances, weights, slot tables.
//! * [`reconcile`]: desired state to BPF map contents, applied by difference.
//! * [`dataplane`]: the embedded eBPF object; load, attach, pin, and typed
//!   access to its maps (also from a pin directory while no agent runs).
//! * [`netns`]: instance links: veth pairs, addresses, routes (rtnetlink).
//! * [`agent`]: the node daemon: host preparation, local instances, following
//!   the desired state.
//! * [`api`]: the agent's HTTP API on a Unix socket, and its client.
//! * [`maps_view`]: `overlay-ctl maps` tables and JSON.
//! * [`cli`]: the `overlay-ctl` command line (clap), a thin layer over the rest.
//! * [`store`]: the cluster store (etcd): allocations, node registration, following.
//! * [`subnets`]: the node subnet pool and length, a cluster setting, and its limits.
//! * [`dns`]: the name service: `*.local` names over unicast DNS and mDNS.
//! * [`probe`]: RTT probes to the other nodes over the East-West port.
//! * [`telemetry`]: `/metrics`, the node in the Prometheus text format.

pub mod agent;
pub mod api;
pub mod balance;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod descriptor;
pub mod dns;
pub mod health;
pub mod maps_view;
pub mod model;
pub mod netns;
pub mod probe;
pub mod reconcile;
pub mod store;
pub mod subnets;
pub mod telemetry;
