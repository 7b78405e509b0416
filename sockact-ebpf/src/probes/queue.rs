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
    kernel::{
        fill_bare_header, fill_queue, now_ns, off, offsets, sock_family, sock_inode, sock_state,
    },
    maps::{LISTENERS, QUEUED, Queued},
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
    entry.submit(wake_flags());
    if !child.is_null() {
        let queued = Queued {
            ts: now,
            listener: inode,
        };
        let _ = QUEUED.insert(&(child as u64), &queued, 0);
    }
    Some(())
}
