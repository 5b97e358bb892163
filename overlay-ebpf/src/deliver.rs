//! Local delivery: a packet for an instance on this node goes straight into
//! its namespace, with the MACs its veth expects.

use aya_ebpf::{helpers::generated::bpf_redirect_peer, programs::TcContext};
use overlay_common::{maps::Endpoint, stats::Reason};

use crate::layout::ETH_ADDRS;
use crate::packet::write;

/// Delivers into the local instance `ep`: its MACs, then `bpf_redirect_peer`
/// into its namespace (no second pass through the host side of its veth).
#[inline(always)]
pub fn to_instance(ctx: &TcContext, ep: &Endpoint) -> Result<i32, Reason> {
    write(ctx, ETH_ADDRS, &[ep.mac, ep.host_mac])?;
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32)
}
