//! The file watcher behind hot reload: debounced notify events on the
//! recipe folder (recursive), the connections file's folder and the
//! `--catalog` folder. Editors save in several steps (write a temp file and
//! rename it, truncate then write, `.swp`/`~`/`.#` companions), `git
//! checkout` replaces many files at once, and Kubernetes swaps a `..data`
//! symlink: so event kinds are not trusted. A debounced batch that touches a
//! watched path only triggers a reload, and the reload compares file
//! contents; a batch with no content change does nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult};

use super::{is_editor_junk, Reloader, Trigger};

/// The default debounce: long enough to merge an editor's save steps,
/// short enough that a save serves within a quarter of a second.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// The watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// notify refused (inotify limits, permissions).
    #[error("cannot watch {path} for changes: {source} (raise fs.inotify.max_user_watches, or reload with SIGHUP)")]
    Watch {
        /// The path.
        path: String,
        /// Why.
        source: notify::Error,
    },
}

/// One watched thing: a folder tree or a single file, with the folder
/// around it (to see the thing itself replaced or re-linked).
#[derive(Debug)]
struct Root {
    /// Absolute, symlinks not resolved (the name users gave).
    path: PathBuf,
    /// A folder (watched recursively) rather than a file.
    tree: bool,
    /// What `path` pointed at when the watch was set (device, inode).
    id: Option<(u64, u64)>,
}

impl Root {
    fn new(path: &Path, tree: bool) -> Root {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Root {
            id: identity(&path),
            path,
            tree,
        }
    }

    fn parent(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    fn name(&self) -> &std::ffi::OsStr {
        self.path.file_name().unwrap_or_default()
    }

    /// Whether an event on `p` may change what this root holds.
    fn concerns(&self, p: &Path) -> bool {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if self.tree && p.starts_with(&self.path) {
            return p == self.path || !is_editor_junk(name);
        }
        // In the folder around it: the root itself, or Kubernetes' `..data`
        // swap (a mounted file is a symlink through `..data`).
        p.parent() == Some(self.parent().as_path())
            && (p.file_name() == Some(self.name()) || name.starts_with(".."))
    }
}

/// (device, inode) of what a path points at now.
fn identity(p: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(p).ok().map(|_| (0, 0))
    }
}

/// Runs until the returned task is aborted: watches the reloader's sources
/// and reloads after each debounced batch that concerns them.
pub fn spawn(
    reloader: Arc<Reloader>,
    debounce: Duration,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    let sources = reloader.sources().clone();
    let mut roots = vec![Root::new(&sources.recipes, true)];
    if let Some(c) = &sources.connections {
        roots.push(Root::new(c, false));
    }
    if let Some(c) = &sources.catalog {
        roots.push(Root::new(c, true));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(debounce, None, move |r: DebounceEventResult| {
        let _ = tx.send(r);
    })
    .map_err(|source| WatchError::Watch {
        path: sources.recipes.display().to_string(),
        source,
    })?;
    // The folders around the roots (not recursive), then the trees.
    let mut parents: Vec<PathBuf> = roots.iter().map(Root::parent).collect();
    parents.sort();
    parents.dedup();
    for p in &parents {
        debouncer
            .watch(p, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                path: p.display().to_string(),
                source,
            })?;
    }
    for r in roots.iter().filter(|r| r.tree && r.id.is_some()) {
        debouncer
            .watch(&r.path, RecursiveMode::Recursive)
            .map_err(|source| WatchError::Watch {
                path: r.path.display().to_string(),
                source,
            })?;
    }
    Ok(tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Everything that arrived meanwhile is the same change.
            let mut batches = vec![first];
            while let Ok(b) = rx.try_recv() {
                batches.push(b);
            }
            let mut relevant = false;
            for b in batches {
                match b {
                    Ok(events) => {
                        relevant |= events.iter().any(|e| {
                            // Reading files (the reload itself) is not a change.
                            !matches!(e.kind, EventKind::Access(_))
                                && e.paths.iter().any(|p| roots.iter().any(|r| r.concerns(p)))
                        });
                    }
                    Err(errors) => {
                        for e in errors {
                            tracing::warn!(error = %e, "file watcher error");
                        }
                        relevant = true;
                    }
                }
            }
            if !relevant {
                continue;
            }
            // A folder replaced (renamed over, re-linked, deleted and made
            // again) keeps the old watch on the old inode: watch it anew.
            for r in roots.iter_mut().filter(|r| r.tree) {
                let now = identity(&r.path);
                if now != r.id {
                    let _ = debouncer.unwatch(&r.path);
                    if now.is_some() {
                        if let Err(e) = debouncer.watch(&r.path, RecursiveMode::Recursive) {
                            tracing::warn!(path = %r.path.display(), error = %e, "cannot watch the replaced folder");
                        }
                    }
                    r.id = now;
                }
            }
            reloader.reload(Trigger::Watch).await;
        }
        drop(debouncer);
    }))
}
