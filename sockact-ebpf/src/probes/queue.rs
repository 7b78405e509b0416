//! The accept queue of watched listeners: each connection queued for accept, with the queue's
//! depth and its maximum, and the time the connection was queued, which the accept that takes
//! it turns into its wait.
//!
//! Where the kernel has `sock:sk_data_ready` (6.3+), the listener itself is seen as each
//! connection is queued, its drop counter too. Every socket that receives data fires that
//! tracepoint, in softirq context: the listener check comes first (one read of the state), and
//! the socket's inode is looked up in `LISTENERS` only for listening sockets.
//!
//! Older kernels: the connection's socket is seen as it is cloned from its listener
//! (`sock:inet_sock_set_state`, LISTEN -> SYN_RECV, state.rs), right before it joins the
//! queue. The clone still holds the listener's address, which `LISTEN_ADDRS` maps to the
//! listener, and its queue counters; the drop counter comes from sock_diag's samples.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sockact_common::{QueueRecord, RecordKind, filter_flags};

use crate::{
    kernel::{
        fill_bare_header, fill_queue, fill_queue_from_clone, listen_addr_of, now_ns, off, offsets,
        sock_family, sock_inode, sock_state,
    },
    maps::{FILTER, LISTEN_ADDRS, LISTENERS, QUEUED, Queued},
    probes::{field, reserve, wake_flags},
};

const TCP_LISTEN: u8 = 10;
/// `sock:sk_data_ready`'s usual layout: skaddr right after the common fields.
const READY_SKADDR: usize = 8;

#[tracepoint]
pub fn sock_sk_data_ready(ctx: TracePointContext) -> u32 {
    let _ = try_ready(&ctx);
    0
}

fn try_ready(ctx: &TracePointContext) -> Option<()> {
    offsets()?;
    if off!(tp_ready_skaddr) == 0 {
        return None;
    }
    let sk: u64 = field(ctx, off!(tp_ready_skaddr), READY_SKADDR)?;
    let sk = sk as *const u8;
    if sock_state(sk) != TCP_LISTEN {
        return None;
    }
    let inode = sock_inode(sk)?;
    LISTENERS.get_ptr(&inode)?;
    write_queued(inode, |rec| fill_queue(rec, sk, sock_family(sk)))
}

/// Writes a queue record of listener `inode` that `fill` completes, returning the connection
/// it saw queued (null when it could not tell), and notes when that one was queued.
#[inline(always)]
fn write_queued(inode: u64, fill: impl FnOnce(&mut QueueRecord) -> *const u8) -> Option<()> {
    let now = now_ns();
    let mut entry = reserve::<QueueRecord>()?;
    // SAFETY: the reserved slot is ours until submitted; every field is written below.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    fill_bare_header(
        &mut rec.header,
        RecordKind::Queue,
        core::mem::size_of::<QueueRecord>(),
        now,
    );
    rec.inode = inode;
    let child = fill(rec);
    entry.submit(wake_flags());
    if !child.is_null() {
        queued(child, inode, now);
    }
    Some(())
}

/// A connection's socket cloned from a listener, on kernels without `sock:sk_data_ready`.
#[inline(always)]
pub fn arrived_as_clone(child: *const u8) -> Option<()> {
    if FILTER.load().flags & filter_flags::QUEUE_VIA_SET_STATE == 0 {
        return None;
    }
    let key = listen_addr_of(child)?;
    // SAFETY: points at a live map value.
    let inode = unsafe { *LISTEN_ADDRS.get_ptr(&key)? };
    LISTENERS.get_ptr(&inode)?;
    write_queued(inode, |rec| {
        fill_queue_from_clone(rec, child, key.family);
        child
    })
}

/// When the connection `child` was queued on listener `inode`, for the accept that takes it.
#[inline(always)]
fn queued(child: *const u8, inode: u64, ts: u64) {
    let queued = Queued {
        ts,
        listener: inode,
    };
    let _ = QUEUED.insert(&(child as u64), &queued, 0);
}
