//! The `--export FILE`: NDJSON of every record, headed by a [`Header`]. The file shows what the
//! host talks to, so it is created for the running user only (mode 0600) and an existing file is
//! never replaced without `--force`. Opening it is the only I/O here; records are written by a
//! [`crate::sink::JsonSink`] on its own [`crate::output::Output`] thread.

use std::{
    fs::{self, File, OpenOptions, Permissions},
    io,
    io::Seek as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::{
    error::ExportError,
    record::{Header, RunOptions, SCHEMA},
    units::WallClock,
};

/// Permissions of an export: read and write for its owner only.
pub const MODE: u32 = 0o600;

/// An opened export file, not yet written to.
#[derive(Debug)]
pub struct ExportFile {
    file: File,
    path: PathBuf,
    /// We created it (so [`ExportFile::discard`] may remove it).
    created: bool,
}

impl ExportFile {
    /// Creates `path` with mode 0600. An existing file is refused, unless `force`: then a regular
    /// file (not a symbolic link) is opened, set to 0600, and emptied only by
    /// [`ExportFile::writer`], so a run that fails to start leaves it as it was.
    pub fn open(path: &Path, force: bool) -> Result<Self, ExportError> {
        let io_error = |source| ExportError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = OpenOptions::new();
        options
            .write(true)
            .mode(MODE)
            .custom_flags(libc::O_NOFOLLOW);
        let existed = if force {
            match fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ExportError::Symlink {
                        path: path.to_owned(),
                    })
                }
                Ok(meta) if !meta.is_file() => {
                    return Err(ExportError::NotRegular {
                        path: path.to_owned(),
                    })
                }
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(io_error(e)),
            }
        } else {
            false
        };
        if force {
            options.create(true);
        } else {
            options.create_new(true);
        }
        let file = options.open(path).map_err(|e| match e.kind() {
            // --force replaces only a regular file: for anything else it would not help.
            io::ErrorKind::AlreadyExists => match fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => ExportError::Symlink {
                    path: path.to_owned(),
                },
                Ok(meta) if !meta.is_file() => ExportError::NotRegular {
                    path: path.to_owned(),
                },
                _ => ExportError::Exists {
                    path: path.to_owned(),
                },
            },
            // O_NOFOLLOW on a symbolic link swapped in since the check above.
            _ if e.raw_os_error() == Some(libc::ELOOP) => ExportError::Symlink {
                path: path.to_owned(),
            },
            _ => io_error(e),
        })?;
        if !file.metadata().map_err(io_error)?.is_file() {
            return Err(ExportError::NotRegular {
                path: path.to_owned(),
            });
        }
        // The mode given at creation is reduced by the umask, and an existing file keeps its
        // own: set it exactly.
        file.set_permissions(Permissions::from_mode(MODE))
            .map_err(io_error)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            created: !existed,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file to write to, from its start (a second handle, sharing the offset: this one
    /// can still [`ExportFile::discard`] it or [`ExportFile::cut`] what follows). An old export
    /// replaced with `--force` is not emptied here: written over from its start, it is cut
    /// once the run has started.
    pub fn writer(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Cuts the file after what was written to it so far (the header, once the run has
    /// started): the rest of an old export replaced with `--force` goes.
    pub fn cut(&self) -> io::Result<()> {
        let mut file = &self.file;
        let end = file.stream_position()?;
        self.file.set_len(end)
    }

    /// Gives up on the export (the tracer could not start): removes the file if we created it.
    pub fn discard(self) {
        if self.created {
            if let Err(e) = fs::remove_file(&self.path) {
                log::debug!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// The header of a stream that starts at kernel time `start_ns`.
pub fn header(options: RunOptions, clock: WallClock, start_ns: u64, complete: bool) -> Header {
    Header {
        schema: SCHEMA,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: read_trimmed("/proc/sys/kernel/hostname"),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        start_time: clock.rfc3339(start_ns),
        monotonic_start_ns: start_ns,
        wall_offset_ns: i64::try_from(clock.offset_ns).unwrap_or(0),
        complete,
        written_to: None,
        options,
        kernel_features: None,
    }
}

/// A one-line /proc file, or "" if it cannot be read.
fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, os::unix::fs::symlink};

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ndjson");
        let export = ExportFile::open(&path, false).unwrap();
        assert_eq!(mode(&path), 0o600);
        let mut file = export.writer().unwrap();
        file.write_all(b"{}\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
    }

    #[test]
    fn refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ndjson");
        fs::write(&path, "keep me").unwrap();
        let err = ExportFile::open(&path, false).unwrap_err();
        assert!(matches!(err, ExportError::Exists { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("x.ndjson") && text.contains("--force"),
            "{text}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[test]
    fn force_replaces_and_sets_0600_only_when_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ndjson");
        fs::write(&path, "old export").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let export = ExportFile::open(&path, true).unwrap();
        assert_eq!(mode(&path), 0o600);
        // A run that fails to start leaves the old file (and does not remove it).
        export.discard();
        assert_eq!(fs::read_to_string(&path).unwrap(), "old export");
        let export = ExportFile::open(&path, true).unwrap();
        let mut file = export.writer().unwrap();
        // Written over from the start, then cut after what this run wrote.
        file.write_all(b"{}\n").unwrap();
        export.cut().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
    }

    #[test]
    fn discard_removes_a_file_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ndjson");
        ExportFile::open(&path, false).unwrap().discard();
        assert!(!path.exists());
    }

    #[test]
    fn force_refuses_links_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "precious").unwrap();
        let link = dir.path().join("link");
        symlink(&target, &link).unwrap();
        for force in [false, true] {
            let err = ExportFile::open(&link, force).unwrap_err();
            assert!(matches!(err, ExportError::Symlink { .. }), "{err:?}");
        }
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        // Without --force too: the error does not suggest a --force that cannot help.
        for force in [false, true] {
            let err = ExportFile::open(dir.path(), force).unwrap_err();
            assert!(matches!(err, ExportError::NotRegular { .. }), "{err:?}");
            let err = ExportFile::open(Path::new("/dev/null"), force).unwrap_err();
            assert!(matches!(err, ExportError::NotRegular { .. }), "{err:?}");
        }
    }

    #[test]
    fn missing_directory_is_an_io_error_naming_the_path() {
        let err = ExportFile::open(Path::new("/nonexistent-dir/x.ndjson"), false).unwrap_err();
        assert!(matches!(err, ExportError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent-dir/x.ndjson"));
    }

    #[test]
    fn header_names_the_host_and_clock() {
        let h = header(RunOptions::default(), WallClock::fixed(1_000), 5, true);
        assert_eq!(h.schema, SCHEMA);
        assert_eq!(h.monotonic_start_ns, 5);
        assert_eq!(h.wall_offset_ns, 1_000);
        assert!(!h.kernel.is_empty());
        assert_eq!(h.start_time, "1970-01-01T00:00:00.000001Z");
    }
}
