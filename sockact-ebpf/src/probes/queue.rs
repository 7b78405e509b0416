//! The accept queue of watched listeners (`sock:sk_data_ready`): each connection queued for
//! accept, with the queue's depth, its maximum and the listener's drop counter, and the time
//! the connection was queued, which the accept that takes it turns into its wait.
//!
//! Every socket that receives data fires this tracepoint, in softirq context: the listener check
//! comes first (one read of the state), and the socket's inode is looked up in `LISTENERS` only
//! for listening sockets.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sockact_common::{QueueRecord, RecordKind};

use crate::{
    kernel::{fill_bare_header, fill_queue, now_ns, offsets, sock_family, sock_inode, sock_state},
    maps::{LISTENERS, QUEUED, Queued},
    probes::reserve,
};

const TCP_LISTEN: u8 = 10;

#[tracepoint]
pub fn sock_sk_data_ready(ctx: TracePointContext) -> u32 {
    let _ = try_ready(&ctx);
    0
}

fn try_ready(ctx: &TracePointContext) -> Option<()> {
    let o = offsets()?;
    if o.tp_ready_skaddr == 0 {
        return None;
    }
    // SAFETY: the offset comes from this tracepoint's format file.
    let sk: u64 = unsafe { ctx.read_at(o.tp_ready_skaddr as usize).ok()? };
    let sk = sk as *const u8;
    if sock_state(sk) != TCP_LISTEN {
        return None;
    }
    let inode = sock_inode(sk)?;
    LISTENERS.get_ptr(&inode)?;
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
    let child = fill_queue(rec, sk, sock_family(sk));
    entry.submit(0);
    if !child.is_null() {
        let queued = Queued {
            ts: now,
            listener: inode,
        };
        let _ = QUEUED.insert(&(child as u64), &queued, 0);
    }
    Some(())
}
