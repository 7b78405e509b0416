//! The D-Bus client to org.freedesktop.systemd1: reads socket and service units, and follows
//! their changes through signals (never by polling, never by running systemctl).
use std::collections::HashMap;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use zbus::{
    Connection, MatchRule, MessageStream, Proxy,
    fdo::PropertiesProxy,
    message::Type as MessageType,
    names::InterfaceName,
    zvariant::{OwnedObjectPath, OwnedValue},
};

use super::{Catalog, ServiceUnit, SocketUnit, is_connection_instance, p2p};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SOCKET: &str = "org.freedesktop.systemd1.Socket";
const SERVICE: &str = "org.freedesktop.systemd1.Service";
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot reach systemd at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: zbus::Error,
    },
    #[error("asking systemd for {what}: {source}")]
    Call {
        what: String,
        #[source]
        source: zbus::Error,
    },
}

/// A unit's state changed (from PropertiesChanged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitChange {
    pub unit: String,
    pub active_state: Option<String>,
    pub sub_state: Option<String>,
    pub invocation_id: Option<String>,
    pub main_pid: Option<u32>,
    pub n_restarts: Option<u32>,
    /// Socket or Service `Result`.
    pub result: Option<String>,
}

impl UnitChange {
    /// Everything a service's state says, as a change.
    pub fn of_service(s: super::ServiceUnit) -> UnitChange {
        UnitChange {
            unit: s.name,
            active_state: Some(s.active_state),
            sub_state: Some(s.sub_state),
            invocation_id: Some(s.invocation_id),
            main_pid: Some(s.main_pid),
            n_restarts: Some(s.n_restarts),
            result: Some(s.result),
        }
    }
}

pub struct Systemd {
    conn: Connection,
    manager: Proxy<'static>,
    address: String,
}

type Props = HashMap<String, OwnedValue>;

fn take<T: TryFrom<OwnedValue>>(props: &mut Props, key: &str) -> Option<T> {
    props.remove(key).and_then(|v| T::try_from(v).ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `/org/freedesktop/systemd1/unit/echo_2eservice` -> `echo.service` (systemd's bus label
/// escaping: `_` and two hex digits for every byte that is not alphanumeric).
pub fn unit_name_of_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?;
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' && i + 2 < bytes.len() {
            let hexpair = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hexpair, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Systemd {
    /// The system bus, or another systemd's bus (`unix:path=...`); systemd's private socket is
    /// spoken to peer-to-peer.
    pub async fn connect(address: Option<&str>) -> Result<Self, SystemdError> {
        let shown = address.unwrap_or("the system bus").to_owned();
        let err = |source| SystemdError::Connect {
            address: shown.clone(),
            source,
        };
        let conn = match address {
            None => Connection::system().await.map_err(err)?,
            Some(a) if p2p::is_private_socket(a) => {
                let path = p2p::unix_path(a).ok_or_else(|| {
                    err(zbus::Error::Address(format!(
                        "{a} is not a unix:path= address"
                    )))
                })?;
                p2p::connect(path).await.map_err(err)?
            }
            Some(a) => zbus::connection::Builder::address(a)
                .map_err(err)?
                .build()
                .await
                .map_err(err)?,
        };
        let manager = Proxy::new(&conn, DEST, PATH, MANAGER).await.map_err(err)?;
        let client = Systemd {
            conn,
            manager,
            address: shown,
        };
        // Without a subscriber systemd sends no signals on a bus.
        client
            .manager
            .call::<_, _, ()>("Subscribe", &())
            .await
            .map_err(|source| SystemdError::Call {
                what: "signals (Subscribe)".into(),
                source,
            })?;
        Ok(client)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    async fn props(
        &self,
        path: &OwnedObjectPath,
        iface: &'static str,
    ) -> Result<Props, SystemdError> {
        let call = |source| SystemdError::Call {
            what: format!("{iface} properties of {}", path.as_str()),
            source,
        };
        let proxy = PropertiesProxy::builder(&self.conn)
            .destination(DEST)
            .map_err(call)?
            .path(path.clone())
            .map_err(call)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(call)?;
        proxy
            .get_all(InterfaceName::from_static_str_unchecked(iface))
            .await
            .map_err(|e| call(e.into()))
    }

    /// The object path of a unit, loading it when needed; None when systemd knows no such unit.
    pub async fn load(&self, name: &str) -> Result<Option<OwnedObjectPath>, SystemdError> {
        let path: OwnedObjectPath =
            self.manager
                .call("LoadUnit", &(name,))
                .await
                .map_err(|source| SystemdError::Call {
                    what: format!("unit {name}"),
                    source,
                })?;
        let mut unit = self.props(&path, UNIT).await?;
        let load_state: String = take(&mut unit, "LoadState").unwrap_or_default();
        Ok((load_state != "not-found").then_some(path))
    }

    pub async fn socket(
        &self,
        name: &str,
        path: &OwnedObjectPath,
    ) -> Result<SocketUnit, SystemdError> {
        let mut unit = self.props(path, UNIT).await?;
        let mut s = self.props(path, SOCKET).await?;
        Ok(SocketUnit {
            name: name.to_owned(),
            listen: take(&mut s, "Listen").unwrap_or_default(),
            accept: take(&mut s, "Accept").unwrap_or_default(),
            backlog: take(&mut s, "Backlog").unwrap_or_default(),
            fd_name: take(&mut s, "FileDescriptorName").unwrap_or_default(),
            triggers: take(&mut unit, "Triggers").unwrap_or_default(),
            n_accepted: take(&mut s, "NAccepted").unwrap_or_default(),
            n_connections: take(&mut s, "NConnections").unwrap_or_default(),
            n_refused: take(&mut s, "NRefused").unwrap_or_default(),
            active_state: take(&mut unit, "ActiveState").unwrap_or_default(),
            sub_state: take(&mut unit, "SubState").unwrap_or_default(),
            // A condition checked (timestamp set) and failed; a socket never started has
            // ConditionResult=no too, with no timestamp.
            condition_failed: !take::<bool>(&mut unit, "ConditionResult").unwrap_or(true)
                && take::<u64>(&mut unit, "ConditionTimestampMonotonic").unwrap_or(0) != 0,
            result: take(&mut s, "Result").unwrap_or_default(),
            part_of: {
                let mut units: Vec<String> = take(&mut unit, "PartOf").unwrap_or_default();
                units.extend(take::<Vec<String>>(&mut unit, "BindsTo").unwrap_or_default());
                units
            },
            max_connections: take(&mut s, "MaxConnections").unwrap_or_default(),
        })
    }

    pub async fn service(
        &self,
        name: &str,
        path: &OwnedObjectPath,
    ) -> Result<ServiceUnit, SystemdError> {
        let mut unit = self.props(path, UNIT).await?;
        let mut s = self.props(path, SERVICE).await?;
        let invocation: Vec<u8> = take(&mut unit, "InvocationID").unwrap_or_default();
        let active_state: String = take(&mut unit, "ActiveState").unwrap_or_default();
        Ok(ServiceUnit {
            name: name.to_owned(),
            main_pid: take(&mut s, "MainPID").unwrap_or_default(),
            control_group: take(&mut s, "ControlGroup").unwrap_or_default(),
            n_restarts: take(&mut s, "NRestarts").unwrap_or_default(),
            sub_state: take(&mut unit, "SubState").unwrap_or_default(),
            invocation_id: hex(&invocation),
            started_invocation: if active_state == "active" {
                hex(&invocation)
            } else {
                String::new()
            },
            active_state,
            triggered_by: take(&mut unit, "TriggeredBy").unwrap_or_default(),
            result: take(&mut s, "Result").unwrap_or_default(),
        })
    }

    /// Asks systemd to `StartUnit`, `StopUnit` or `RestartUnit` a unit (mode "replace"); the job
    /// runs on, [`Systemd::wait_state`] waits for its outcome.
    pub async fn job(&self, method: &'static str, unit: &str) -> Result<(), SystemdError> {
        self.manager
            .call::<_, _, OwnedObjectPath>(method, &(unit, "replace"))
            .await
            .map(|_| ())
            .map_err(|source| SystemdError::Call {
                what: format!("{method} {unit}"),
                source,
            })
    }

    /// Sends a signal to a unit's main process (`KillUnit`, whom "main").
    pub async fn kill_main(&self, unit: &str, signal: i32) -> Result<(), SystemdError> {
        self.manager
            .call::<_, _, ()>("KillUnit", &(unit, "main", signal))
            .await
            .map_err(|source| SystemdError::Call {
                what: format!("KillUnit {unit}"),
                source,
            })
    }

    /// A unit's ActiveState and SubState now.
    pub async fn state(&self, unit: &str) -> Result<(String, String), SystemdError> {
        let Some(path) = self.load(unit).await? else {
            return Ok(("not-found".into(), String::new()));
        };
        let mut props = self.props(&path, UNIT).await?;
        Ok((
            take(&mut props, "ActiveState").unwrap_or_default(),
            take(&mut props, "SubState").unwrap_or_default(),
        ))
    }

    /// Waits until a unit's ActiveState is one of `states`; returns the state reached, or the
    /// last one seen when `timeout` passed.
    pub async fn wait_state(
        &self,
        unit: &str,
        states: &[&str],
        timeout: std::time::Duration,
    ) -> Result<(bool, String), SystemdError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (active, _) = self.state(unit).await?;
            if states.contains(&active.as_str()) {
                return Ok((true, active));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok((false, active));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Every loaded socket unit and every service one of them triggers.
    pub async fn catalog(&self) -> Result<Catalog, SystemdError> {
        type Row = (
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        );
        let rows: Vec<Row> = self
            .manager
            .call("ListUnits", &())
            .await
            .map_err(|source| SystemdError::Call {
                what: "the unit list (ListUnits)".into(),
                source,
            })?;
        let mut catalog = Catalog::default();
        for row in rows.iter().filter(|r| r.0.ends_with(".socket")) {
            let socket = self.socket(&row.0, &row.6).await?;
            catalog.sockets.insert(row.0.clone(), socket);
        }
        let services: Vec<String> = catalog
            .sockets
            .values()
            .flat_map(|s| {
                s.triggers
                    .iter()
                    .filter(|t| t.ends_with(".service"))
                    .cloned()
            })
            .collect();
        for name in services {
            if catalog.services.contains_key(&name) {
                continue;
            }
            if let Some(path) = self.load(&name).await? {
                let service = self.service(&name, &path).await?;
                catalog.services.insert(name, service);
            }
        }
        Ok(catalog)
    }

    /// Forwards unit changes until the connection ends: PropertiesChanged of units, and the
    /// Manager's UnitNew (a socket unit that appears is read), UnitRemoved and JobRemoved (a
    /// finished job re-reads its unit: MainPID and NRestarts change without a signal of their
    /// own on older systemd).
    pub async fn watch(self, tx: mpsc::Sender<Watched>) -> Result<(), SystemdError> {
        let call = |source| SystemdError::Call {
            what: "unit changes (signals)".into(),
            source,
        };
        let props_rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .interface("org.freedesktop.DBus.Properties")
            .map_err(call)?
            .member("PropertiesChanged")
            .map_err(call)?
            .path_namespace(UNIT_PATH_PREFIX.trim_end_matches('/'))
            .map_err(call)?
            .build();
        let manager_rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .interface(MANAGER)
            .map_err(call)?
            .path(PATH)
            .map_err(call)?
            .build();
        let props = MessageStream::for_match_rule(props_rule, &self.conn, Some(256))
            .await
            .map_err(call)?;
        let manager = MessageStream::for_match_rule(manager_rule, &self.conn, Some(256))
            .await
            .map_err(call)?;
        let mut stream = futures_util::stream::select(props, manager);
        // The signals are pumped off the connection by a task of their own, which never waits
        // for a reply: were the loop below to read them while it waits for a reply (re-reading
        // a unit), a burst of signals (an Accept=yes storm starts hundreds of units a second)
        // would fill the stream's queue, the connection would stop reading, and the reply
        // would never come. Accept=yes connection instances are dropped right there.
        let (pump, mut signals) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let Ok(msg) = msg else { continue };
                if about_connection_instance(&msg) {
                    continue;
                }
                if pump.send(msg).is_err() {
                    break;
                }
            }
        });
        // The last ActiveState of every socket unit: a socket is read again only when it
        // starts, not at each of its listening/running flips.
        let mut socket_states: HashMap<String, String> = HashMap::new();
        while let Some(msg) = signals.recv().await {
            let header = msg.header();
            let member = header
                .member()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default();
            let watched = match member.as_str() {
                "PropertiesChanged" => match properties_changed(&msg) {
                    Some(change) => {
                        // A socket unit that starts is read again: one that UnitNew announced
                        // before it was loaded has its Listen addresses only now.
                        let starts = change.unit.ends_with(".socket")
                            && change.active_state.as_ref().is_some_and(|now| {
                                let before = socket_states.insert(change.unit.clone(), now.clone());
                                now == "active" && before.as_deref() != Some("active")
                            });
                        if starts
                            && let Ok(Some(path)) = self.load(&change.unit).await
                            && let Ok(socket) = self.socket(&change.unit, &path).await
                            && tx.send(Watched::NewSocket(socket)).await.is_err()
                        {
                            break;
                        }
                        Watched::Changed(change)
                    }
                    None => continue,
                },
                "UnitNew" => {
                    let Ok((name, path)) = msg.body().deserialize::<(String, OwnedObjectPath)>()
                    else {
                        continue;
                    };
                    if !name.ends_with(".socket") {
                        continue;
                    }
                    match self.socket(&name, &path).await {
                        Ok(socket) => Watched::NewSocket(socket),
                        Err(_) => continue,
                    }
                }
                "UnitRemoved" => match msg.body().deserialize::<(String, OwnedObjectPath)>() {
                    Ok((name, _)) => {
                        socket_states.remove(&name);
                        Watched::Removed(name)
                    }
                    Err(_) => continue,
                },
                "JobRemoved" => {
                    let Ok((_, _, name, _)) = msg
                        .body()
                        .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    else {
                        continue;
                    };
                    if !name.ends_with(".service") {
                        continue;
                    }
                    let Ok(Some(path)) = self.load(&name).await else {
                        continue;
                    };
                    match self.service(&name, &path).await {
                        Ok(s) => Watched::Changed(UnitChange::of_service(s)),
                        Err(_) => continue,
                    }
                }
                _ => continue,
            };
            if tx.send(watched).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// What the watcher reports.
#[derive(Clone, Debug)]
pub enum Watched {
    Changed(UnitChange),
    NewSocket(SocketUnit),
    Removed(String),
}

/// Whether a signal is about an Accept=yes connection instance: its properties, or a job of it.
fn about_connection_instance(msg: &zbus::Message) -> bool {
    let header = msg.header();
    match header.member().map(|m| m.as_str()) {
        Some("PropertiesChanged") => header
            .path()
            .and_then(|p| unit_name_of_path(p.as_str()))
            .is_some_and(|name| is_connection_instance(&name)),
        Some("JobRemoved" | "UnitNew" | "UnitRemoved" | "JobNew") => {
            let name = match header.member().map(|m| m.as_str()) {
                Some("JobRemoved") => msg
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    .ok()
                    .map(|b| b.2),
                Some("JobNew") => msg
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String)>()
                    .ok()
                    .map(|b| b.2),
                _ => msg
                    .body()
                    .deserialize::<(String, OwnedObjectPath)>()
                    .ok()
                    .map(|b| b.0),
            };
            name.is_some_and(|n| is_connection_instance(&n))
        }
        _ => false,
    }
}

fn properties_changed(msg: &zbus::Message) -> Option<UnitChange> {
    let signal = zbus::fdo::PropertiesChanged::from_message(msg.clone())?;
    let args = signal.args().ok()?;
    let unit = msg
        .header()
        .path()
        .and_then(|p| unit_name_of_path(p.as_str()))?;
    let iface = args.interface_name().as_str();
    // Socket and Service come first, then Unit: a failure's Result is known when its
    // ActiveState arrives.
    if iface != UNIT && iface != SERVICE && iface != SOCKET {
        return None;
    }
    let mut props: Props = args
        .changed_properties()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.try_to_owned().ok()?)))
        .collect();
    let change = UnitChange {
        unit,
        active_state: take(&mut props, "ActiveState"),
        sub_state: take(&mut props, "SubState"),
        invocation_id: take::<Vec<u8>>(&mut props, "InvocationID").map(|b| hex(&b)),
        main_pid: take(&mut props, "MainPID"),
        n_restarts: take(&mut props, "NRestarts"),
        result: take(&mut props, "Result"),
    };
    let empty = UnitChange {
        unit: change.unit.clone(),
        ..Default::default()
    };
    (change != empty).then_some(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_unescape() {
        assert_eq!(
            unit_name_of_path("/org/freedesktop/systemd1/unit/echo_2eservice").as_deref(),
            Some("echo.service")
        );
        assert_eq!(
            unit_name_of_path("/org/freedesktop/systemd1/unit/echo_2dadmin_2esocket").as_deref(),
            Some("echo-admin.socket")
        );
        assert_eq!(
            unit_name_of_path("/org/freedesktop/systemd1/unit/_31x_2eservice").as_deref(),
            Some("1x.service")
        );
        assert_eq!(unit_name_of_path("/org/freedesktop/systemd1"), None);
    }
}
