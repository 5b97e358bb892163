//! The programs' entry points, one file per hook. Each entry point only
//! turns the result of its `try_*` function into a verdict and a count; the
//! datapath steps they call live in the modules beside this folder.

mod from_instance;
mod uplink;
mod uplink_xdp;
