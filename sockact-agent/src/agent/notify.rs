//! sd_notify: tells systemd the agent is ready (Type=notify), through $NOTIFY_SOCKET.
use std::os::{
    linux::net::SocketAddrExt,
    unix::net::{SocketAddr, UnixDatagram},
};

/// Sends `state` (e.g. `READY=1`) when systemd asked for it; a failure is logged, not fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = (|| {
        let addr = match path.strip_prefix('@') {
            // An abstract socket.
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = sent {
        tracing::warn!("telling systemd {state} through {path}: {e}");
    }
}
