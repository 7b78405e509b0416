//! A real rsyslog (Debian's rsyslog and rsyslog-relp) as a log pipeline's receiver: imtcp and
//! imrelp, each into its own file.
use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::free_port;

/// A real rsyslog (Debian's package): imtcp and imrelp, each into its own file; the RELP
/// ruleset's queue in Direct mode, so that an acknowledgement means written.
pub struct Rsyslog {
    pub dir: PathBuf,
    pub tcp: u16,
    pub relp: u16,
    child: Option<Child>,
}

impl Rsyslog {
    pub fn start(dir: &Path) -> Rsyslog {
        let (tcp, relp) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="256k")
module(load="imtcp")
module(load="imrelp")
template(name="raw" type="string" string="%rawmsg%\n")
template(name="msg" type="string" string="%msg%\n")
ruleset(name="tcp") {{ action(type="omfile" file="{d}/tcp.ndjson" template="raw" flushOnTXEnd="on" asyncWriting="off") }}
ruleset(name="relp" queue.type="Direct") {{ action(type="omfile" file="{d}/relp.ndjson" template="msg" flushOnTXEnd="on" asyncWriting="off") }}
input(type="imtcp" port="{tcp}" ruleset="tcp")
input(type="imrelp" port="{relp}" ruleset="relp")
"#
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let mut r = Rsyslog {
            dir: dir.to_owned(),
            tcp,
            relp,
            child: None,
        };
        r.restart();
        r
    }

    /// Starts rsyslogd and waits until both inputs listen.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.log"))
            .unwrap();
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rsyslogd (packages rsyslog, rsyslog-relp)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        for port in [self.tcp, self.relp] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "rsyslogd does not listen: {}",
                    self.log()
                );
                sleep(Duration::from_millis(50));
            }
        }
    }

    /// Stops it reading and acknowledging, as a hung receiver does.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
    }

    /// The events in one of its files.
    pub fn events(&self, file: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{file}: not an event ({e}): {l}"))
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill9();
    }
}
