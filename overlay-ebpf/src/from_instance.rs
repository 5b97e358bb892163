//! TC ingress on the host side of each instance's veth: everything an
//! instance sends enters the overlay here.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use overlay_common::stats::Reason;

use crate::maps::count;

#[classifier]
pub fn from_instance(ctx: TcContext) -> i32 {
    match try_from_instance(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK,
    }
}

fn try_from_instance(ctx: &TcContext) -> Result<i32, ()> {
    count(Reason::Pass, ctx.len());
    Ok(TC_ACT_OK)
}
