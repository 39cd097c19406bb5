//! Reading snapshots from disk: files, directories of files, or stdin.

use std::io::Read;
use std::path::{Path, PathBuf};

use svcproxy_compiler::Source;

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
