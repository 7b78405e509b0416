//! `sock:inet_sock_set_state`, one tracepoint with three uses: a parked non-blocking connect
//! leaving SYN_SENT (its outcome, connect.rs); a watched listener closing (its queue is watched
//! no longer, nor its inode once reused); and, on kernels without `sock:sk_data_ready`, a
//! connection's socket cloned from a watched listener, which is the connection arriving in that
//! listener's accept queue (queue.rs).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    kernel::{listen_addr_of, off, offsets, sock_inode},
    maps::{LISTEN_ADDRS, LISTENERS},
    probes::{connect, field, queue},
};

const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_LISTEN: i32 = 10;

/// The tracepoint's usual layout: skaddr, oldstate, newstate after the common fields.
const STATE_SKADDR: usize = 8;
const STATE_OLD: usize = 16;
const STATE_NEW: usize = 20;

#[tracepoint]
pub fn sock_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

fn try_set_state(ctx: &TracePointContext) -> Option<()> {
    offsets()?;
    if off!(tp_state_old) == 0 {
        return None;
    }
    let old: i32 = field(ctx, off!(tp_state_old), STATE_OLD)?;
    if old != TCP_LISTEN && old != TCP_SYN_SENT {
        return None;
    }
    let sk: u64 = field(ctx, off!(tp_state_skaddr), STATE_SKADDR)?;
    let new: i32 = field(ctx, off!(tp_state_new), STATE_NEW)?;
    if old == TCP_SYN_SENT {
        return connect::left_syn_sent(sk, new);
    }
    if new == TCP_SYN_RECV {
        // Not the listener: a connection's socket, cloned from it a moment ago.
        return queue::arrived_as_clone(sk as *const u8);
    }
    listener_closed(sk as *const u8)
}

fn listener_closed(sk: *const u8) -> Option<()> {
    let inode = sock_inode(sk)?;
    let _ = LISTENERS.remove(&inode);
    let key = listen_addr_of(sk)?;
    // SAFETY: points at a live map value.
    if LISTEN_ADDRS.get_ptr(&key).map(|v| unsafe { *v }) == Some(inode) {
        let _ = LISTEN_ADDRS.remove(&key);
    }
    Some(())
}
