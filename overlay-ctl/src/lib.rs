//! EdgeIO overlay: node agent, orchestrator commands and operator CLI.
//!
//! Module map:
//!
//! * [`dataplane`]: the embedded eBPF object; load, attach, pin, and typed
//!   access to its maps (also from a pin directory while no agent runs).
//! * [`cli`]: the `overlay-ctl` command line (clap), a thin layer over the rest.
//!
//! The agent, store, reconciler, DNS and API modules arrive with their issues.

pub mod cli;
pub mod dataplane;
