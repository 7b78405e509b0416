//! The file sink: NDJSON appended to a file, rotated by size (`path.1` the newest of `keep`
//! old files), reopened on SIGHUP so that an outside rotation works too.
use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
};

use tokio::{fs, io::AsyncWriteExt};

use super::{Feed, batch};
use crate::config::SinkConfig;

struct Open {
    file: fs::File,
    size: u64,
}

async fn open(path: &Path) -> std::io::Result<Open> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).await?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let size = file.metadata().await?.len();
    Ok(Open { file, size })
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// `path` becomes `path.1`, `path.1` becomes `path.2`, ..., and `path.KEEP` is removed.
async fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return fs::remove_file(path).await;
    }
    let _ = fs::remove_file(rotated(path, keep)).await;
    for n in (1..keep).rev() {
        match fs::rename(rotated(path, n), rotated(path, n + 1)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(path, rotated(path, 1)).await
}

pub async fn run(config: SinkConfig, mut feed: Feed) {
    let path = config
        .path
        .clone()
        .expect("checked: a file sink has a path");
    let max = config.max_size_mb * 1024 * 1024;
    let mut current: Option<Open> = None;
    while let Some((bytes, lines)) = batch(&mut feed.rx).await {
        if feed.stats.reopen.swap(false, Ordering::Relaxed) {
            current = None;
        }
        let result = async {
            if current
                .as_ref()
                .is_some_and(|o| o.size > 0 && o.size + bytes.len() as u64 > max)
            {
                if let Some(mut o) = current.take() {
                    o.file.flush().await?;
                }
                rotate(&path, config.keep).await?;
            }
            if current.is_none() {
                current = Some(open(&path).await?);
            }
            let o = current.as_mut().expect("opened");
            o.file.write_all(&bytes).await?;
            o.file.flush().await?;
            o.size += bytes.len() as u64;
            Ok::<_, std::io::Error>(())
        };
        match result.await {
            Ok(()) => {
                feed.stats.working(&feed.name);
                feed.stats.delivered.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                current = None;
                feed.stats
                    .failed(&feed.name, &format!("writing {}", path.display()), &e);
                feed.stats.drop_events(lines);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotation_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("sockact-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.ndjson");
        for generation in 0..4 {
            std::fs::write(&path, format!("{generation}\n")).unwrap();
            rotate(&path, 2).await.unwrap();
        }
        let read = |n| std::fs::read_to_string(rotated(&path, n)).ok();
        assert_eq!(read(1).as_deref(), Some("3\n"));
        assert_eq!(read(2).as_deref(), Some("2\n"));
        assert_eq!(read(3), None);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
