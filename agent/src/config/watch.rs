//! Watches the config dir (inotify) and says when it should be read again.
use std::{path::Path, time::Duration};

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Keeps the watch alive; drop it to stop watching.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    changes: mpsc::Receiver<()>,
}

/// Editors and `kubectl cp` write files in several steps; wait this long after the last event.
const SETTLE: Duration = Duration::from_millis(50);

impl DirWatch {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let (tx, changes) = mpsc::channel(1);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            match event {
                // A full channel already means "read again"; one pending signal is enough.
                Ok(_) => {
                    let _ = tx.try_send(());
                }
                Err(e) => tracing::warn!(error = %e, "config dir watch error"),
            }
        })
        .context("creating the config dir watcher")?;
        // Recursive so that ConfigMap-style `..data` symlink swaps are seen too.
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", dir.display()))?;
        Ok(Self { _watcher: watcher, changes })
    }

    /// Waits for a change and for the writes that follow it to settle.
    pub async fn changed(&mut self) -> Option<()> {
        self.changes.recv().await?;
        loop {
            match tokio::time::timeout(SETTLE, self.changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_) => return Some(()),
            }
        }
    }
}
