//! Pinned attachments: links that outlive the agent, so the dataplane keeps
//! forwarding while the agent is stopped or restarting.
//!
//! A restarted agent finds the pin and swaps its freshly loaded program into
//! the existing link (`bpf_link_update`, atomic: no packet sees a gap and the
//! hook never holds two copies). A pin whose link no longer works (its
//! interface was deleted) is replaced by a new attachment.

use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::xdp::{XdpLink, XdpMode};
use aya::programs::{SchedClassifier, TcAttachType, Xdp};

use super::{Error, Result};

fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> Error {
    move |source| Error::Program { name, source }
}

fn pin_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |why| Error::Pin {
        path: path.to_path_buf(),
        why,
    }
}

/// The pinned link at `pin`, if there is one that still refers to a live link.
fn adopt(pin: &Path) -> Option<FdLink> {
    if !pin.exists() {
        return None;
    }
    match PinnedLink::from_pin(pin) {
        Ok(link) => Some(FdLink::from(link)),
        Err(_) => {
            let _ = std::fs::remove_file(pin);
            None
        }
    }
}

/// TCX ingress on `ifname`, pinned at `pin`.
pub fn tc(prog: &mut SchedClassifier, name: &'static str, ifname: &str, pin: &Path) -> Result<()> {
    if let Some(fd) = adopt(pin) {
        let swapped = SchedClassifierLink::try_from(fd)
            .map_err(|e| e.to_string())
            .and_then(|link| prog.attach_to_link(link).map_err(|e| e.to_string()));
        if swapped.is_ok() {
            return Ok(());
        }
        std::fs::remove_file(pin).map_err(|e| pin_err(pin)(e.to_string()))?;
    }
    let id = prog
        .attach(ifname, TcAttachType::Ingress)
        .map_err(prog_err(name))?;
    let link = prog.take_link(id).map_err(prog_err(name))?;
    let fd = FdLink::try_from(link).map_err(|e| pin_err(pin)(e.to_string()))?;
    fd.pin(pin).map_err(|e| pin_err(pin)(e.to_string()))?;
    Ok(())
}

/// XDP on `ifname`, pinned at `pin`.
pub fn xdp(prog: &mut Xdp, name: &'static str, ifname: &str, pin: &Path) -> Result<()> {
    if let Some(fd) = adopt(pin) {
        let swapped = XdpLink::try_from(fd)
            .map_err(|e| e.to_string())
            .and_then(|link| prog.attach_to_link(link).map_err(|e| e.to_string()));
        if swapped.is_ok() {
            return Ok(());
        }
        std::fs::remove_file(pin).map_err(|e| pin_err(pin)(e.to_string()))?;
    }
    let id = prog
        .attach(ifname, XdpMode::default())
        .map_err(prog_err(name))?;
    let link = prog.take_link(id).map_err(prog_err(name))?;
    let fd = FdLink::try_from(link).map_err(|e| pin_err(pin)(e.to_string()))?;
    fd.pin(pin).map_err(|e| pin_err(pin)(e.to_string()))?;
    Ok(())
}

/// Removes a pin: the link detaches once nothing else holds it.
pub fn unpin(pin: &Path) -> Result<()> {
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(pin_err(pin)(e.to_string())),
        _ => Ok(()),
    }
}
