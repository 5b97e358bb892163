//! A few `bpf(2)` commands, called directly: loading a trivial program (the
//! baseline every cost is measured against, and the pass-through XDP
//! program of wire mode), attaching it to an interface, and
//! `BPF_PROG_TEST_RUN` (so the dataplane's programs and the baseline are
//! timed by the very same code).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`'s `BPF_XDP`.
const BPF_XDP: u32 = 37;

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads `r0 = ret; exit`: the cheapest program of `prog_type` there is.
pub fn load_trivial(prog_type: u32, ret: i32, name: &str) -> io::Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K into r0, then BPF_JMP | BPF_EXIT.
    let mut insns = [0u64; 2];
    let mov: [u8; 8] = {
        let mut b = [0u8; 8];
        b[0] = 0xb7;
        b[4..8].copy_from_slice(&ret.to_le_bytes());
        b
    };
    insns[0] = u64::from_ne_bytes(mov);
    insns[1] = u64::from_ne_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]);
    let license = b"GPL\0";
    let mut attr = ProgLoad {
        prog_type,
        // So that an XDP program can also be attached through a link.
        expected_attach_type: if prog_type == BPF_PROG_TYPE_XDP {
            BPF_XDP
        } else {
            0
        },
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let n = name.len().min(15);
    attr.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `union bpf_attr` for `BPF_LINK_CREATE`, up to `flags`.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches XDP program `prog` to interface `ifindex` of the calling
/// thread's network namespace; it stays attached while the returned link
/// is open (or until the interface goes).
pub fn attach_xdp(prog: BorrowedFd, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: 0,
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// The program's return value (of the last run).
    pub ret: u32,
    /// The kernel's time per run, ns.
    pub ns: u32,
    /// Length of the packet the program left (when `out` was given).
    pub out_len: u32,
}

/// Runs `prog` `repeat` times on `data` (and `ctx`); with `out`, the
/// resulting packet is copied there.
pub fn test_run(
    prog: BorrowedFd,
    data: &[u8],
    out: Option<&mut [u8]>,
    ctx: Option<&[u8]>,
    repeat: u32,
) -> io::Result<Run> {
    let (out_ptr, out_len) = match out {
        Some(o) => (o.as_mut_ptr() as u64, o.len() as u32),
        None => (0, 0),
    };
    let mut attr = TestRun {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: out_ptr,
        data_size_out: out_len,
        repeat,
        ctx_size_in: ctx.map_or(0, |c| c.len() as u32),
        ctx_in: ctx.map_or(0, |c| c.as_ptr() as u64),
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(Run {
        ret: attr.retval,
        ns: attr.duration,
        out_len: attr.data_size_out,
    })
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The id of the program behind `fd` (the first fields of `struct bpf_prog_info`).
pub fn prog_id(fd: BorrowedFd) -> io::Result<u32> {
    // type, id, tag[8]: 16 bytes are enough, the kernel fills what fits.
    let mut info = [0u32; 4];
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[1])
}

#[cfg(test)]
mod tests {
    #[test]
    fn attr_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<super::TestRun>(), 80);
        assert_eq!(std::mem::size_of::<super::ProgLoad>(), 72);
    }
}
