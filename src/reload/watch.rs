//! The file watcher behind hot reload: debounced notify events on the
//! recipe folder and the `--catalog` folder (recursive), and a cheap look
//! every 250 ms at the roots themselves (a folder renamed over or
//! re-linked, the connections file replaced or edited). Editors save in several steps (write a temp file and
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

use super::{Reloader, Trigger};
use crate::recipe::load::is_editor_junk;

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

/// How often the roots themselves are looked at: a recipe folder renamed
/// over or re-linked, a connections file replaced or edited. Cheaper than
/// watching the folders around them, which often hold the store's busy
/// database files.
const ROOT_POLL: Duration = Duration::from_millis(250);

/// One watched thing: a folder tree (watched recursively with notify) or a
/// single file (looked at every [`ROOT_POLL`]).
#[derive(Debug)]
struct Root {
    /// Absolute, symlinks not resolved (the name users gave).
    path: PathBuf,
    /// A folder (watched recursively) rather than a file.
    tree: bool,
    /// What `path` points at now, as last seen.
    id: Option<Signature>,
    /// A file changed at the last look: reload once it holds still, so a
    /// write in progress is not read half-done.
    settling: bool,
}

/// (device, inode) of what a path points at, plus size and modification
/// time for files: a rename over it, a re-pointed symlink (Kubernetes'
/// `..data`) or an edit in place all change it.
type Signature = (u64, u64, u64, i64, i64);

impl Root {
    fn new(path: &Path, tree: bool) -> Root {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Root {
            id: signature(&path, tree),
            path,
            tree,
            settling: false,
        }
    }

    /// Whether an event on `p` may change what this tree holds. Hidden
    /// entries count (unlike when reading): Kubernetes updates a ConfigMap
    /// mount by re-pointing its `..data` symlink.
    fn concerns(&self, p: &Path) -> bool {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        self.tree && p.starts_with(&self.path) && (p == self.path || !is_editor_junk(name))
    }
}

fn signature(p: &Path, tree: bool) -> Option<Signature> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).ok()?;
        Some(if tree {
            (m.dev(), m.ino(), 0, 0, 0)
        } else {
            (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec())
        })
    }
    #[cfg(not(unix))]
    {
        let m = std::fs::metadata(p).ok()?;
        let t = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        Some((0, 0, m.len(), t.as_secs() as i64, t.subsec_nanos() as i64))
    }
}

/// Runs until the returned task is aborted: watches the reloader's sources
/// and reloads after each debounced batch that concerns them, and when a
/// root itself was replaced or (for files) changed.
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
    for r in roots.iter().filter(|r| r.tree && r.id.is_some()) {
        debouncer
            .watch(&r.path, RecursiveMode::Recursive)
            .map_err(|source| WatchError::Watch {
                path: r.path.display().to_string(),
                source,
            })?;
    }
    Ok(tokio::spawn(async move {
        let mut poll = tokio::time::interval(ROOT_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut relevant = false;
            tokio::select! {
                first = rx.recv() => {
                    let Some(first) = first else { break };
                    // Everything that arrived meanwhile is the same change.
                    let mut batches = vec![first];
                    while let Ok(b) = rx.try_recv() {
                        batches.push(b);
                    }
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
                }
                _ = poll.tick() => {}
            }
            // A folder replaced (renamed over, re-linked, deleted and made
            // again) keeps the old watch on the old inode: watch it anew. A
            // file replaced or edited: reload.
            for r in roots.iter_mut() {
                let now = signature(&r.path, r.tree);
                if now == r.id {
                    if r.settling {
                        r.settling = false;
                        relevant = true;
                    }
                    continue;
                }
                if !r.tree {
                    r.settling = true;
                    r.id = now;
                    continue;
                }
                relevant = true;
                let _ = debouncer.unwatch(&r.path);
                if now.is_some() {
                    if let Err(e) = debouncer.watch(&r.path, RecursiveMode::Recursive) {
                        tracing::warn!(path = %r.path.display(), error = %e, "cannot watch the replaced folder");
                    }
                }
                r.id = now;
            }
            if relevant {
                reloader.reload(Trigger::Watch).await;
            }
        }
        drop(debouncer);
    }))
}
