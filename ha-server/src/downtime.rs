//! The node's downtime totals kept over restarts: `DIR/downtime` in the
//! data directory, a small JSON object ([`DowntimeHistory`]).
//!
//! Owns: that file. It is metrics, not consensus state: losing it loses
//! only the figures of earlier runs, so a missing file starts from zero, and
//! a damaged one is set aside (renamed `downtime.damaged`, logged) and
//! replaced; it never stops a node from starting.
//!
//! Invariants: the file is read only up to [`MAX_BYTES`]; it is replaced
//! atomically (a temporary file, synced, renamed, the directory synced;
//! the temporary file is removed on a failed save and at the next start), so a crash leaves the old or the new totals, never a
//! torn file; it is rewritten every [`SAVE_EVERY`] and once more when the
//! node stops, so a crash loses at most that much accounting.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ha_core::metrics::DowntimeHistory;

/// The file's name in the data directory.
pub const FILE: &str = "downtime";

/// The largest file read: the totals take about 150 bytes.
pub const MAX_BYTES: u64 = 4096;

/// How often the totals are saved while the node runs.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The totals saved in `dir`: zero when there are none; a damaged file is
/// renamed aside and logged, and counts as none.
pub fn load(dir: &Path) -> DowntimeHistory {
    // A save a crash cut short left its temporary file: the totals are in
    // the last complete one.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{FILE}.tmp")))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let p = path(dir);
    let read = || -> Result<Option<DowntimeHistory>, String> {
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut text = String::new();
        f.take(MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        if text.len() as u64 > MAX_BYTES {
            return Err(format!("longer than {MAX_BYTES} bytes"));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| e.to_string())
    };
    match read() {
        Ok(h) => h.unwrap_or_default(),
        Err(why) => {
            let aside = dir.join(format!("{FILE}.damaged"));
            let moved = std::fs::rename(&p, &aside);
            tracing::warn!(
                file = %p.display(),
                aside = %aside.display(),
                moved = moved.is_ok(),
                "the downtime totals of earlier runs are unreadable ({why}); counting from zero"
            );
            DowntimeHistory::default()
        }
    }
}

/// Replaces the totals saved in `dir` with `h`, atomically.
pub fn save(dir: &Path, h: &DowntimeHistory) -> std::io::Result<()> {
    // One name: the directory's lock keeps other processes out, and one
    // process saves one at a time (see `Server`).
    let tmp = dir.join(format!("{FILE}.tmp"));
    let text = serde_json::to_string(h).map_err(std::io::Error::other)?;
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path(dir))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

/// Saves on a blocking thread; a failure is logged (once per kind of
/// error in a row), never fatal.
pub(crate) async fn save_logged(dir: PathBuf, h: DowntimeHistory, last_error: &mut Option<String>) {
    let r = tokio::task::spawn_blocking(move || save(&dir, &h)).await;
    let err = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(e) = &err
        && last_error.as_ref() != Some(e)
    {
        tracing::warn!("cannot save the downtime totals: {e}");
    }
    *last_error = err;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_survive_a_save_and_a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), DowntimeHistory::default(), "none yet");
        let h = DowntimeHistory {
            observed_ms: 10_000,
            planned_ms: 40,
            unplanned_ms: 700,
            failovers: 3,
            handoffs: 2,
            handover_ms: 30,
        };
        save(dir.path(), &h).unwrap();
        assert_eq!(load(dir.path()), h);
        std::fs::write(path(dir.path()), b"{\"observed_ms\": 1").unwrap();
        assert_eq!(load(dir.path()), DowntimeHistory::default());
        assert!(dir.path().join("downtime.damaged").exists());
        assert!(!path(dir.path()).exists());
        std::fs::write(path(dir.path()), vec![b' '; MAX_BYTES as usize + 1]).unwrap();
        assert_eq!(load(dir.path()), DowntimeHistory::default(), "too long");
        save(dir.path(), &h).unwrap();
        assert_eq!(load(dir.path()), h, "saving replaces what was set aside");
    }
}
