//! Files replaced atomically: a save that fails midway (disk full, a size limit, a
//! crash) never leaves a truncated file where a good one was.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` by way of a temporary file in the same directory, flushed
/// to disk and then renamed over `path` (atomic on POSIX and Windows within one file
/// system). On error the temporary file is removed and `path` is untouched.
///
/// # Errors
/// What the OS said; callers name the file (`SaveError::Io`).
pub(crate) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = temporary_path(path);
    let written = File::create(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written.and_then(|()| fs::rename(&temporary, path)) {
        Ok(()) => Ok(()),
        Err(source) => {
            // Best effort: the error that matters is the one above.
            let _ = fs::remove_file(&temporary);
            Err(source)
        }
    }
}

/// `dir/.name.tmp-<pid>`: hidden, in the target's directory (so the rename stays on one
/// file system), distinct per process.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "densenet".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("densenet-atomic-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = scratch_dir("replace");
        let path = dir.join("w.safetensors");
        fs::write(&path, b"old").unwrap();
        write(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("w.safetensors")]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = scratch_dir("fail");
        // A directory in the file's place: the rename over it fails after the
        // temporary was written in full.
        let path = dir.join("taken");
        fs::create_dir_all(path.join("inside")).unwrap();
        assert!(write(&path, b"data").is_err());
        assert!(path.join("inside").is_dir(), "what was there is untouched");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary left");
        fs::remove_dir_all(dir).unwrap();
    }
}
