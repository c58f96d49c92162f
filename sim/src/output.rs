//! Files vesim writes: atomically, and never over one of its inputs.
//!
//! Every output (a trace, a minimized trace, the quirk report's traces) is written to a
//! temporary file in the destination's directory and renamed over the destination only once it
//! is complete and flushed to disk. A run interrupted while writing (a file-size limit, a full
//! disk, a kill) leaves the previous file as it was; the temporary file is removed when the
//! write fails with an error (a kill can leave it behind, named `.NAME.vesim-PID.tmp`).
//!
//! [`check_output`] refuses, before any work starts, an output path that is a directory, whose
//! directory does not exist, or that names the same file as one of the run's inputs.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why an output path is refused, in words.
pub fn check_output(path: &Path, inputs: &[&Path]) -> Result<(), String> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err("the output path is empty".into());
    }
    if path.is_dir() {
        return Err(format!("{shown} is a directory, not a file"));
    }
    let Some(name) = path.file_name() else {
        return Err(format!("{shown} names no file"));
    };
    let parent = parent_of(path);
    if !parent.is_dir() {
        return Err(format!(
            "{shown} cannot be written: its directory {} does not exist",
            parent.display()
        ));
    }
    // The output as it will resolve: its directory's real path and its name.
    let out = parent
        .canonicalize()
        .map(|d| d.join(name))
        .map_err(|e| format!("{shown} cannot be written: {e}"))?;
    let out = out.canonicalize().unwrap_or(out);
    for input in inputs {
        if input.canonicalize().is_ok_and(|i| i == out) {
            return Err(format!(
                "{shown} is also an input of this run; write the output to another file"
            ));
        }
    }
    Ok(())
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes what `fill` writes to `path` atomically: into a temporary file in the same
/// directory, flushed and synced, then renamed over `path`. When `fill` or any step fails,
/// the temporary file is removed and `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let tmp = parent_of(path).join(format!(
        ".{}.vesim-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vesim-out-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let d = scratch("fail");
        let p = d.join("t.trace");
        std::fs::write(&p, "old contents\n").unwrap();
        // The writer fails half way, as a full disk would.
        let r = write_atomic_with(&p, |w| {
            w.write_all(b"new contents, half")?;
            Err(std::io::Error::other("no space left on device"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old contents\n");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        write_atomic(&p, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_output_paths_are_refused() {
        let d = scratch("paths");
        let input = d.join("in.toml");
        std::fs::write(&input, "x").unwrap();
        assert!(check_output(&d, &[]).unwrap_err().contains("directory"));
        assert!(check_output(&d.join("nope/t.trace"), &[])
            .unwrap_err()
            .contains("does not exist"));
        assert!(check_output(&input, &[&input])
            .unwrap_err()
            .contains("also an input"));
        // The same file by another spelling.
        let other = d.join(".").join("in.toml");
        assert!(check_output(&other, &[&input]).is_err());
        assert!(check_output(&d.join("out.trace"), &[&input]).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
