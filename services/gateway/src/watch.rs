//! Files the gateway reads again while it runs (the accounts, the token keys): polled for
//! a change of modification time or size, so an edited file or an updated Secret takes
//! effect with no restart, and a broken one leaves the last good contents in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// When a file was last changed and its length: a change of either means "read again".
pub type Stamp = Option<(SystemTime, u64)>;

/// The file's stamp now (None: no file).
pub fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// Every `every`, until `shutdown`: when the file at `path` no longer has stamp `seen`
/// (taken before its contents in use were read, so no change is missed), runs `reload` on
/// a blocking thread (it reads and parses the file).
pub async fn on_change(
    path: PathBuf,
    mut seen: Stamp,
    every: Duration,
    shutdown: CancellationToken,
    reload: impl Fn(&Path) + Send + Sync + 'static,
) {
    let reload = Arc::new(reload);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let (reload, path) = (reload.clone(), path.clone());
        if let Err(error) = tokio::task::spawn_blocking(move || reload(&path)).await {
            tracing::error!(%error, "reading a changed file failed");
        }
    }
}
