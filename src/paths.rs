//! Every file and folder imm-daemon reads or writes, and the permissions they get.
//!
//! Locations come from the `directories` crate (XDG on Linux, Application Support on
//! macOS) unless `IMM_HOME` relocates all of them under one folder. Folders the program
//! creates are 0700; files it writes are 0600 and replaced atomically.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[cfg(unix)]
pub mod strict;

/// Environment variable that relocates every file under one folder.
pub const ENV_HOME: &str = "IMM_HOME";
/// Environment variable naming the configuration file.
pub const ENV_CONFIG: &str = "IMM_CONFIG";

const APP: &str = "imm-daemon";

/// Errors locating or preparing the program's folders and files.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("no home directory could be determined; set {ENV_HOME}")]
    NoHome,
    #[error("cannot create folder {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the configuration path came from, for `config paths` and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// `--config PATH`
    Flag,
    /// `IMM_CONFIG`
    Env,
    /// The default location (under `IMM_HOME` when set).
    Default,
}

/// The resolved locations of everything the program touches.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Paths {
    pub config_file: PathBuf,
    pub config_source: ConfigSource,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub database: PathBuf,
    /// The daemon's single-instance lock (holds its pid and version).
    pub lock_file: PathBuf,
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// What the daemon last reported about itself, for `status` when it is down.
    pub state_file: PathBuf,
    /// The audit chain's head, kept outside the database.
    pub audit_head: PathBuf,
}

impl Paths {
    /// Resolves paths from the process environment and an optional `--config` flag.
    pub fn resolve(config_flag: Option<&Path>) -> Result<Paths, PathsError> {
        let home = std::env::var_os(ENV_HOME).filter(|v| !v.is_empty());
        let config_env = std::env::var_os(ENV_CONFIG).filter(|v| !v.is_empty());
        Self::resolve_with(
            home.map(PathBuf::from),
            config_flag.map(Path::to_path_buf),
            config_env.map(PathBuf::from),
        )
    }

    /// Resolves paths from explicit inputs; the flag wins over the environment variable.
    pub fn resolve_with(
        home: Option<PathBuf>,
        config_flag: Option<PathBuf>,
        config_env: Option<PathBuf>,
    ) -> Result<Paths, PathsError> {
        let (config_dir, data_dir, state_dir, runtime_dir) = match home {
            Some(home) => {
                let home = absolute(&home);
                (
                    home.join("config"),
                    home.join("data"),
                    home.join("state"),
                    home.join("run"),
                )
            }
            None => {
                let dirs = directories::ProjectDirs::from("", "", APP).ok_or(PathsError::NoHome)?;
                let state = dirs
                    .state_dir()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| dirs.data_local_dir().join("state"));
                let runtime = dirs
                    .runtime_dir()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| state.join("run"));
                (
                    dirs.config_dir().to_path_buf(),
                    dirs.data_dir().to_path_buf(),
                    state,
                    runtime,
                )
            }
        };
        let (config_file, config_source) = match (config_flag, config_env) {
            (Some(p), _) => (absolute(&p), ConfigSource::Flag),
            (None, Some(p)) => (absolute(&p), ConfigSource::Env),
            (None, None) => (config_dir.join("config.toml"), ConfigSource::Default),
        };
        Ok(Paths {
            database: data_dir.join("imm-daemon.db"),
            lock_file: runtime_dir.join("imm-daemon.lock"),
            socket: runtime_dir.join("imm-daemon.sock"),
            state_file: state_dir.join("daemon-state.json"),
            audit_head: state_dir.join("audit-head.json"),
            config_file,
            config_source,
            config_dir,
            data_dir,
            state_dir,
            runtime_dir,
        })
    }
}

impl Paths {
    /// Refuses to go on when another local user could change what the program reads,
    /// writes or runs: the configuration file, every folder of the program's and what is
    /// in them, and the folders above them (see [`strict`]). Run before anything is read.
    #[cfg(unix)]
    pub fn check_private(&self) -> Result<(), strict::StrictError> {
        strict::check_all(
            &[&self.config_file],
            &[
                &self.config_dir,
                &self.data_dir,
                &self.state_dir,
                &self.runtime_dir,
            ],
        )
    }

    /// The configuration file's part of [`Paths::check_private`], run again at each load.
    #[cfg(unix)]
    pub fn check_config_file(&self) -> Result<(), strict::StrictError> {
        strict::check(&self.config_file)
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Creates `dir` and any missing parents; folders this call creates get mode 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), PathsError> {
    let err = |source| PathsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(err)
}

/// Replaces `path` atomically with `contents`: a 0600 temporary file in the same folder
/// is written, flushed to disk and renamed over the target, so readers see the old file
/// or the new one, never a part.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), PathsError> {
    prepare_atomic(path, contents)?.commit()
}

/// A file written and flushed beside its target but not yet in place.
pub struct PendingFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl PendingFile {
    /// Renames the file over its target and flushes the folder.
    pub fn commit(self) -> Result<(), PathsError> {
        self.finish(false)
    }

    /// Like [`PendingFile::commit`], but fails if the target exists.
    pub fn commit_new(self) -> Result<(), PathsError> {
        self.finish(true)
    }

    fn finish(self, no_clobber: bool) -> Result<(), PathsError> {
        let dir = self.tmp.path().parent().map(Path::to_path_buf);
        let persisted = if no_clobber {
            self.tmp.persist_noclobber(&self.path)
        } else {
            self.tmp.persist(&self.path)
        };
        persisted.map_err(|e| PathsError::Write {
            path: self.path.clone(),
            source: e.error,
        })?;
        if let Some(dir) = dir {
            sync_dir(&dir);
        }
        Ok(())
    }
}

/// The first half of [`write_atomic`]: the 0600 temporary file, written and flushed; the
/// target is untouched until [`PendingFile::commit`]. Dropping it removes the file.
pub fn prepare_atomic(path: &Path, contents: &[u8]) -> Result<PendingFile, PathsError> {
    let err = |source| PathsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    ensure_private_dir(dir)?;
    // tempfile creates the file with mode 0600 on unix.
    let mut tmp = tempfile::Builder::new()
        .prefix(".imm-tmp-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(contents).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    Ok(PendingFile {
        tmp,
        path: path.to_path_buf(),
    })
}

/// Makes a rename durable by flushing its folder; best effort where unsupported.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Opens `path` for reading and writing, creating it as an empty 0600 file (and its
/// folder, 0700) if needed; never truncates. What lock files are opened with.
pub fn open_private(path: &Path) -> Result<fs::File, PathsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure_private_dir(dir)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|source| PathsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `path` as an empty 0600 file if it does not exist yet (SQLite gives its WAL
/// and shared-memory files the database file's mode, so this covers them too).
pub fn ensure_private_file(path: &Path) -> Result<(), PathsError> {
    open_private(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imm_home_relocates_everything() {
        let p = Paths::resolve_with(Some("/srv/imm".into()), None, None).unwrap();
        for dir in [&p.config_dir, &p.data_dir, &p.state_dir, &p.runtime_dir] {
            assert!(dir.starts_with("/srv/imm"), "{dir:?}");
        }
        assert_eq!(p.config_file, PathBuf::from("/srv/imm/config/config.toml"));
        assert_eq!(p.database, PathBuf::from("/srv/imm/data/imm-daemon.db"));
        assert_eq!(p.config_source, ConfigSource::Default);
    }

    #[test]
    fn flag_beats_env_for_config() {
        let p = Paths::resolve_with(
            Some("/h".into()),
            Some("/a.toml".into()),
            Some("/b.toml".into()),
        )
        .unwrap();
        assert_eq!(p.config_file, PathBuf::from("/a.toml"));
        assert_eq!(p.config_source, ConfigSource::Flag);
        let p = Paths::resolve_with(Some("/h".into()), None, Some("/b.toml".into())).unwrap();
        assert_eq!(p.config_file, PathBuf::from("/b.toml"));
        assert_eq!(p.config_source, ConfigSource::Env);
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/file.txt");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }
}
