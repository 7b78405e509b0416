//! The file sink: NDJSON appended to a file, rotated by size (`path.1` the newest of `keep`
//! old files), reopened on SIGHUP so that an outside rotation works too.
use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
};

use std::{fs, io::Write};

use super::{Feed, batch_blocking};
use crate::config::SinkConfig;

struct Open {
    file: fs::File,
    size: u64,
}

/// Opens (or creates, 0640: lines hold command lines) the file to append to. A last line
/// that a crash left half written is ended first, so that the next line starts a line of its
/// own: the half line stays as it is, one malformed line, never spoiling the next.
fn open(path: &Path) -> std::io::Result<Open> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o640)
        .open(path)?;
    let mut size = file.metadata()?.len();
    if size > 0 {
        let mut last = [0u8];
        file.read_exact_at(&mut last, size - 1)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            size += 1;
        }
    }
    Ok(Open { file, size })
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// `path` becomes `path.1`, `path.1` becomes `path.2`, ..., and `path.KEEP` is removed.
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return fs::remove_file(path);
    }
    let _ = fs::remove_file(rotated(path, keep));
    for n in (1..keep).rev() {
        match fs::rename(rotated(path, n), rotated(path, n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(path, rotated(path, 1))
}

pub fn run(config: SinkConfig, feed: Feed) {
    let path = config
        .path
        .clone()
        .expect("checked: a file sink has a path");
    write_rotating(&path, config.max_size_mb * 1024 * 1024, config.keep, feed);
}

/// Appends every batch to `path`, rotating before a batch would take it past `max` bytes.
fn write_rotating(path: &Path, max: u64, keep: u32, mut feed: Feed) {
    let mut current: Option<Open> = None;
    while let Some((bytes, lines)) = batch_blocking(&mut feed.rx, &feed.stats) {
        if feed.stats.reopen.swap(false, Ordering::Relaxed) {
            current = None;
        }
        let mut write = || {
            if current.is_none() {
                current = Some(open(path)?);
            }
            let full = |o: &Open| o.size > 0 && o.size + bytes.len() as u64 > max;
            if current.as_ref().is_some_and(full) {
                current = None;
                rotate(path, keep)?;
                current = Some(open(path)?);
            }
            let o = current.as_mut().expect("opened");
            let _writing = feed.stats.writing(lines);
            if let Err(e) = o.file.write_all(&bytes) {
                // A disk that filled up mid-batch: no half line stays behind to spoil the next.
                let _ = o.file.set_len(o.size);
                return Err(e);
            }
            o.size += bytes.len() as u64;
            Ok::<_, std::io::Error>(())
        };
        match write() {
            Ok(()) => feed.delivered(lines),
            Err(e) => {
                current = None;
                feed.stats.drop_events(lines);
                feed.failed(&format!("writing {}", path.display()), &e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::AgentConfig, output::Emit, sinks::Sinks};

    #[tokio::test]
    async fn the_sink_rotates_by_size_and_reopens_a_moved_file() {
        let dir = std::env::temp_dir().join(format!("sockact-file-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.ndjson");
        let config = AgentConfig::parse(
            &format!(
                "[[sink]]\nkind = \"file\"\npath = \"{}\"\nmax_size_mb = 1\nkeep = 2\n",
                path.display()
            ),
            "t.toml",
        )
        .unwrap();
        let events: Vec<crate::events::Event> =
            include_str!("../../../tests/fixtures/restart_gap.ndjson")
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        let (mut sinks, _control, tasks) = Sinks::start(&config.sinks);
        let stats = sinks.stats().lock().unwrap()[0].1.clone();
        // Many rounds of the recording, over a megabyte in all.
        let mut written = 0u64;
        while written < 1_500_000 {
            for e in &events {
                written += crate::sinks::Line::encode(e, false).unwrap().json.len() as u64;
                sinks.emit(e.clone()).unwrap();
            }
            tokio::task::yield_now().await;
        }
        let emitted = sinks.lines_written();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while stats.delivered.load(Ordering::Relaxed) < emitted {
            assert!(
                std::time::Instant::now() < deadline,
                "not delivered within a minute"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let lines_of =
            |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count() as u64);
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let old = rotated(&path, 1);
        assert!(
            size(&old) > 0 && size(&old) <= 1024 * 1024,
            "{}",
            size(&old)
        );
        assert!(size(&path) <= 1024 * 1024, "{}", size(&path));
        assert_eq!(
            lines_of(&old) + lines_of(&path),
            emitted,
            "every line in one of the two"
        );
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);

        // logrotate moved it away; SIGHUP sets reopen: the next lines go to a new file.
        std::fs::rename(&path, dir.join("moved")).unwrap();
        stats.reopen.store(true, Ordering::Relaxed);
        sinks.emit(events[0].clone()).unwrap();
        drop(sinks);
        tasks.finish(std::time::Duration::from_secs(2)).await;
        assert_eq!(lines_of(&path), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_half_written_last_line_is_ended_before_appending_and_new_files_are_0640() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sockact-file-repair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let torn = dir.join("torn.ndjson");
        // What a crash mid-write leaves.
        std::fs::write(
            &torn,
            "{\"v\":1,\"seq\":1,\"kind\":\"agent\",\"action\":\"sta",
        )
        .unwrap();
        let fresh = dir.join("fresh.ndjson");
        let config = AgentConfig::parse(
            &format!(
                "[[sink]]\nkind = \"file\"\npath = \"{}\"\n\n[[sink]]\nkind = \"file\"\npath = \"{}\"\n",
                torn.display(),
                fresh.display()
            ),
            "t.toml",
        )
        .unwrap();
        let event: crate::events::Event = serde_json::from_str(
            include_str!("../../../tests/fixtures/restart_gap.ndjson")
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let (mut sinks, _control, tasks) = Sinks::start(&config.sinks);
        sinks.emit(event).unwrap();
        drop(sinks);
        tasks.finish(std::time::Duration::from_secs(2)).await;
        let text = std::fs::read_to_string(&torn).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("\"sta"),
            "the half line stays as it was: {text}"
        );
        let whole: serde_json::Value = serde_json::from_str(lines[1]).expect("a whole line");
        assert_eq!(whole["v"], 1);
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("sockact-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.ndjson");
        for generation in 0..4 {
            std::fs::write(&path, format!("{generation}\n")).unwrap();
            rotate(&path, 2).unwrap();
        }
        let read = |n| std::fs::read_to_string(rotated(&path, n)).ok();
        assert_eq!(read(1).as_deref(), Some("3\n"));
        assert_eq!(read(2).as_deref(), Some("2\n"));
        assert_eq!(read(3), None);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
