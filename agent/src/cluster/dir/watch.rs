//! Watches the config dir (inotify) and says when it should be read again.
use std::{path::Path, time::Duration};

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode, Watcher as _, event::ModifyKind};
use tokio::sync::mpsc;

/// Keeps the watch alive; drop it to stop watching.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    changes: mpsc::Receiver<()>,
    /// When the change being settled was first seen. Kept across calls so that a caller's
    /// `select!` cancelling [`DirWatch::changed`] mid-settle does not lose the change.
    pending_since: Option<tokio::time::Instant>,
}

/// Editors and `kubectl cp` write files in several steps; wait this long after the last event.
const SETTLE: Duration = Duration::from_millis(50);
const MAX_SETTLE: Duration = Duration::from_millis(300);

impl DirWatch {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let (tx, changes) = mpsc::channel(1);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            match event {
                // Reads (the agent's own included) and metadata changes (atime) are not changes:
                // reacting to them would make every reload trigger the next.
                Ok(event)
                    if matches!(
                        event.kind,
                        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
                    ) => {}
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
        Ok(Self { _watcher: watcher, changes, pending_since: None })
    }

    /// Waits for a change and for the writes that follow it to settle (at most `MAX_SETTLE`,
    /// so a steady trickle of writes cannot hold reloads back).
    pub async fn changed(&mut self) -> Option<()> {
        // Cancellation-safe: every await below can be dropped and resumed by the next call.
        let since = match self.pending_since {
            Some(since) => since,
            None => {
                self.changes.recv().await?;
                *self.pending_since.insert(tokio::time::Instant::now())
            }
        };
        let deadline = since + MAX_SETTLE;
        loop {
            let wait = SETTLE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, self.changes.recv()).await {
                Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                Ok(None) => return None,
                Ok(Some(())) | Err(_) => {
                    self.pending_since = None;
                    return Some(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
