//! Following systemd for a whole session: its unit changes, and its bus coming back. A
//! `systemctl daemon-reexec`, a dbus restart or a container's systemd restarting drops every
//! bus connection: that is said once, the bus is dialled again with backoff, and every unit is
//! read again, so that what changed meanwhile (a restart, a socket that went away) is
//! reported as a change like any other.
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    Catalog,
    client::{Systemd, SystemdError, UnitChange, Watched},
};

/// How long a reconnection may take before it is tried again.
const ATTEMPT: Duration = Duration::from_secs(10);
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// Forwards unit changes into `tx` until the session ends (its receiver is dropped).
pub async fn follow(mut client: Systemd, tx: mpsc::Sender<Watched>) {
    let address = client.address().to_owned();
    loop {
        let why = match client.watch(tx.clone()).await {
            Ok(()) => "the connection closed".to_owned(),
            Err(e) => e.to_string(),
        };
        if tx.is_closed() {
            return;
        }
        tracing::warn!(
            "lost systemd's bus at {address} ({why}): unit states are not followed until it is \
             back; reconnecting"
        );
        let since = Instant::now();
        let mut pause = FIRST_PAUSE;
        client = loop {
            tokio::time::sleep(pause).await;
            if tx.is_closed() {
                return;
            }
            let attempt = async {
                let c = Systemd::connect(Some(&address)).await?;
                let catalog = c.catalog().await?;
                Ok::<_, SystemdError>((c, catalog))
            };
            match tokio::time::timeout(ATTEMPT, attempt).await {
                Ok(Ok((c, catalog))) => {
                    for w in resync(catalog) {
                        if tx.send(w).await.is_err() {
                            return;
                        }
                    }
                    tracing::info!(
                        "systemd's bus is back after {:.1} s; units read again",
                        since.elapsed().as_secs_f64()
                    );
                    break c;
                }
                Ok(Err(e)) => tracing::debug!("systemd's bus not back yet: {e}"),
                Err(_) => tracing::debug!("systemd's bus not back yet: no answer in {ATTEMPT:?}"),
            }
            pause = (pause * 2).min(LONGEST_PAUSE);
        };
    }
}

/// Every unit as read after a reconnection, as the changes the session already understands:
/// a change to the state it knows is reported, the same state is not.
pub fn resync(catalog: Catalog) -> Vec<Watched> {
    let mut out = Vec::new();
    for (_, s) in catalog.sockets {
        let change = UnitChange {
            unit: s.name.clone(),
            active_state: Some(s.active_state.clone()),
            sub_state: Some(s.sub_state.clone()),
            invocation_id: None,
            main_pid: None,
            n_restarts: None,
            result: Some(s.result.clone()),
        };
        out.push(Watched::NewSocket(s));
        out.push(Watched::Changed(change));
    }
    for (_, s) in catalog.services {
        out.push(Watched::Changed(UnitChange::of_service(s)));
    }
    out
}
