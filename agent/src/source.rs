//! Where snapshots come from. [`SnapshotSource`] is what the agent's loop needs of a
//! source: read the whole snapshot, and say when it may have changed. [`FileSource`]
//! reads files and directories and watches them with inotify; a Kubernetes API source
//! will be a second implementation.

use std::io::Read;
use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use svcproxy_compiler::Source;

pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// A source of snapshots for `svcproxy run`.
pub trait SnapshotSource: Send {
    /// The whole current snapshot.
    fn read(&self) -> Result<Vec<Source>, SourceError>;

    /// Starts calling `changed` whenever the snapshot may have changed (spurious calls
    /// are fine: a sync with nothing to do sends nothing). Watching stops when the
    /// returned guard is dropped.
    fn watch(&self, changed: Box<dyn Fn() + Send + Sync>) -> Result<WatchGuard, SourceError>;
}

/// Keeps a source's watch alive.
pub struct WatchGuard(#[allow(dead_code)] Box<dyn Send>);

/// Snapshot files and directories on disk.
pub struct FileSource {
    pub paths: Vec<PathBuf>,
    pub max_bytes: usize,
}

impl SnapshotSource for FileSource {
    fn read(&self) -> Result<Vec<Source>, SourceError> {
        Ok(read_sources(&self.paths, self.max_bytes)?)
    }

    /// Directories are watched recursively, files through their parent directory:
    /// editors replace files by renaming, which a watch on the file itself would lose.
    fn watch(&self, changed: Box<dyn Fn() + Send + Sync>) -> Result<WatchGuard, SourceError> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    changed();
                }
            })?;
        for path in &self.paths {
            let (target, mode) = if path.is_dir() {
                (path.clone(), RecursiveMode::Recursive)
            } else {
                let parent = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), PathBuf::from);
                (parent, RecursiveMode::NonRecursive)
            };
            watcher
                .watch(&target, mode)
                .map_err(|e| format!("watching {}: {e}", target.display()))?;
        }
        Ok(WatchGuard(Box::new(watcher)))
    }
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: is {size} bytes, over the limit of {limit} bytes (--max-input-bytes)")]
    TooLarge {
        path: String,
        size: u64,
        limit: usize,
    },
}

/// Reads every snapshot path. A directory contributes its `*.yaml`, `*.yml` and
/// `*.json` files (recursively, sorted by path, hidden files skipped, so editor
/// leftovers are ignored); `-` is standard input.
pub fn read_sources(paths: &[PathBuf], max_bytes: usize) -> Result<Vec<Source>, ReadError> {
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            files.push(path.clone());
        } else if path.is_dir() {
            collect_dir(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    let mut sources = Vec::with_capacity(files.len());
    let mut total = 0usize;
    for file in files {
        let name = file.display().to_string();
        let mut text = String::new();
        let io = |source| ReadError::Io {
            path: name.clone(),
            source,
        };
        if file.as_os_str() == "-" {
            std::io::stdin()
                .take(max_bytes as u64 + 1)
                .read_to_string(&mut text)
                .map_err(io)?;
        } else {
            let size = std::fs::metadata(&file).map_err(io)?.len();
            if size > max_bytes as u64 {
                return Err(ReadError::TooLarge {
                    path: name,
                    size,
                    limit: max_bytes,
                });
            }
            text = std::fs::read_to_string(&file).map_err(io)?;
        }
        total += text.len();
        if total > max_bytes {
            return Err(ReadError::TooLarge {
                path: name,
                size: total as u64,
                limit: max_bytes,
            });
        }
        let name = if file.as_os_str() == "-" {
            "<stdin>".to_string()
        } else {
            name
        };
        sources.push(Source { name, text });
    }
    Ok(sources)
}

fn collect_dir(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), ReadError> {
    let io = |source| ReadError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            collect_dir(&entry, files)?;
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(entry);
        }
    }
    Ok(())
}
