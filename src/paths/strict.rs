//! OpenSSH's StrictModes for imm-daemon's files: before the configuration, keys, tokens,
//! the database or the socket are read, every folder on the way to them must be the
//! user's (or root's) and writable by nobody else; otherwise another local user could
//! swap the configuration (and have the daemon send them a token) or the lock.
//!
//! The walk goes from the file or folder up to the first folder owned by root or the
//! user's home folder, both included (for root itself: to its home or `/`), on the path with symlinks resolved; a folder that
//! does not exist yet is skipped (the program creates it 0700). A root-owned folder that
//! others may write is accepted only with the sticky bit (`/tmp`), where nobody can rename
//! what is not theirs. A group-writable folder is accepted when its group is the user's
//! private group (same name, the user's primary group, no other members), as Debian's
//! OpenSSH does, since that is what a umask of 002 gives on such systems.
//!
//! Hand-written: no maintained crate does this walk; the user and group lookups are the
//! C library's reentrant calls.

use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What makes a path unsafe to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Writable by its group (not the user's private one) or by everyone.
    Writable,
    /// Owned by somebody else (neither the user nor root).
    Owner,
}

/// Why `path` cannot be trusted, with what fixes it.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to use {path}: {what} (mode {mode:04o}, owner {owner}, group {group}); another local user could change what imm-daemon reads or runs there. Fix: {fix}",
    path = path.display(),
    what = match problem {
        Problem::Writable => "it can be written by other users",
        Problem::Owner => "it belongs to another user",
    },
)]
pub struct Unsafe {
    pub path: PathBuf,
    pub problem: Problem,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub fix: String,
}

/// Checks `path` (a file or folder, existing or not) and every folder above it.
pub fn check(path: &Path) -> Result<(), StrictError> {
    check_as(path, Me::current())
}

/// Checks each of `paths` as [`check`] does, and what lies directly in each of `dirs`
/// (the program's own folders) as well as the folders themselves; the user is looked up
/// once.
pub fn check_all(paths: &[&Path], dirs: &[&Path]) -> Result<(), StrictError> {
    let me = Me::current();
    for p in paths {
        check_as(p, me)?;
    }
    for d in dirs {
        check_as(d, me)?;
        contents_as(d, me)?;
    }
    Ok(())
}

fn check_as(path: &Path, me: &Me) -> Result<(), StrictError> {
    // The nearest part that exists; what does not exist yet is created 0700 later.
    let mut existing = path;
    loop {
        match fs::symlink_metadata(existing) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match existing.parent() {
                Some(p) if !p.as_os_str().is_empty() => existing = p,
                _ => return Ok(()),
            },
            Err(source) => {
                return Err(StrictError::Inspect {
                    path: existing.to_path_buf(),
                    source,
                });
            }
        }
    }
    let real = fs::canonicalize(existing).map_err(|source| StrictError::Inspect {
        path: existing.to_path_buf(),
        source,
    })?;
    let home = me.home.as_deref().and_then(|h| fs::canonicalize(h).ok());
    let mut at: &Path = &real;
    loop {
        let meta = fs::metadata(at).map_err(|source| StrictError::Inspect {
            path: at.to_path_buf(),
            source,
        })?;
        judge(at, &meta, me)?;
        // Root's folders are the system's: the walk ends there, except for root itself,
        // whose walk goes on to its home or `/`.
        let stop = (meta.uid() == 0 && me.uid != 0) || home.as_deref() == Some(at);
        match at.parent() {
            Some(p) if !stop => at = p,
            _ => return Ok(()),
        }
    }
}

/// Checks what lies directly in `dir`, one of the program's own folders (a missing one
/// passes): every file and folder must be the user's (or root's) and writable by nobody
/// else; anything else (a socket, a link) must be the user's.
fn contents_as(dir: &Path, me: &Me) -> Result<(), StrictError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StrictError::Inspect {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| StrictError::Inspect {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Gone since the listing (a temporary file renamed into place).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(StrictError::Inspect { path, source }),
        };
        let foreign = meta.uid() != me.uid && meta.uid() != 0;
        if meta.is_file() || meta.is_dir() || foreign {
            judge(&path, &meta, me)?;
        }
    }
    Ok(())
}

/// Why a path could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    #[error(transparent)]
    Unsafe(#[from] Box<Unsafe>),
    #[error("cannot inspect {path} to check that only you can change it")]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn judge(path: &Path, meta: &fs::Metadata, me: &Me) -> Result<(), StrictError> {
    let mode = meta.mode() & 0o7777;
    let uid = meta.uid();
    let unsafe_ = |problem: Problem, fix: String| {
        StrictError::Unsafe(Box::new(Unsafe {
            path: path.to_path_buf(),
            problem,
            mode,
            owner: user_name(uid).unwrap_or_else(|| format!("uid {uid}")),
            group: group_name(meta.gid()).unwrap_or_else(|| format!("gid {}", meta.gid())),
            fix,
        }))
    };
    let quoted = shell_quote(path);
    if uid != me.uid && uid != 0 {
        return Err(unsafe_(
            Problem::Owner,
            format!(
                "`chown {} {quoted}` (as root), or point imm-daemon at folders of your own",
                me.name.as_deref().unwrap_or("$(id -un)")
            ),
        ));
    }
    let others_write = mode & 0o002 != 0;
    let group_write = mode & 0o020 != 0;
    let sticky_root_dir = uid == 0 && meta.is_dir() && mode & 0o1000 != 0;
    if (others_write && !sticky_root_dir)
        || (group_write && !sticky_root_dir && !me.private_group(meta.gid()))
    {
        return Err(unsafe_(Problem::Writable, format!("`chmod go-w {quoted}`")));
    }
    Ok(())
}

fn shell_quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+@%:".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The user running the program, as the walk needs them.
struct Me {
    uid: u32,
    gid: u32,
    name: Option<String>,
    home: Option<PathBuf>,
}

impl Me {
    /// The user this process runs as, looked up once: every folder check of a command
    /// needs them, and the password database lookup is the slow part of a check.
    fn current() -> &'static Me {
        static ME: std::sync::OnceLock<Me> = std::sync::OnceLock::new();
        ME.get_or_init(Me::look_up)
    }

    #[allow(unsafe_code)]
    fn look_up() -> Me {
        // SAFETY: geteuid and getegid cannot fail and touch no memory of ours.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let pw = passwd(uid);
        Me {
            uid,
            gid: pw.as_ref().map(|p| p.gid).unwrap_or(gid),
            name: pw.as_ref().map(|p| p.name.clone()),
            home: directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf()),
        }
    }

    /// Whether `gid` is the user's private group: named as the user, their primary group,
    /// and nobody else a member.
    fn private_group(&self, gid: u32) -> bool {
        let Some(name) = &self.name else { return false };
        if gid != self.gid {
            return false;
        }
        match group(gid) {
            Some(g) => &g.name == name && g.members.iter().all(|m| m == name),
            None => false,
        }
    }
}

struct Passwd {
    name: String,
    gid: u32,
}

struct Group {
    name: String,
    members: Vec<String>,
}

fn user_name(uid: u32) -> Option<String> {
    passwd(uid).map(|p| p.name)
}

fn group_name(gid: u32) -> Option<String> {
    group(gid).map(|g| g.name)
}

/// Runs a `get*_r` lookup with a buffer that grows on ERANGE.
fn with_buffer<T>(
    mut call: impl FnMut(&mut [libc::c_char]) -> Result<Option<T>, i32>,
) -> Option<T> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match call(&mut buf) {
            Ok(found) => return found,
            Err(libc::ERANGE) if size < 1 << 20 => size *= 4,
            Err(_) => return None,
        }
    }
}

#[allow(unsafe_code)]
fn passwd(uid: u32) -> Option<Passwd> {
    with_buffer(|buf| {
        // SAFETY: all pointers are valid for the call; getpwuid_r writes only into `pw`,
        // `buf` (of the length given) and `out`, and the strings read point into `buf`.
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
            if rc != 0 {
                return Err(rc);
            }
            if out.is_null() || pw.pw_name.is_null() {
                return Ok(None);
            }
            Ok(Some(Passwd {
                name: CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned(),
                gid: pw.pw_gid,
            }))
        }
    })
}

#[allow(unsafe_code)]
fn group(gid: u32) -> Option<Group> {
    with_buffer(|buf| {
        // SAFETY: as in `passwd`; `gr_mem` is a null-terminated array of pointers into
        // `buf`.
        unsafe {
            let mut gr: libc::group = std::mem::zeroed();
            let mut out: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out);
            if rc != 0 {
                return Err(rc);
            }
            if out.is_null() || gr.gr_name.is_null() {
                return Ok(None);
            }
            let mut members = Vec::new();
            let mut m = gr.gr_mem;
            while !m.is_null() && !(*m).is_null() {
                members.push(CStr::from_ptr(*m).to_string_lossy().into_owned());
                m = m.add(1);
            }
            Ok(Some(Group {
                name: CStr::from_ptr(gr.gr_name).to_string_lossy().into_owned(),
                members,
            }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A group the user is not the only member of, for group-writable cases.
    fn shared_gid() -> u32 {
        // `users` (100) exists on Debian and most Linux systems; any group that is not
        // the user's private one does.
        let me = Me::current();
        [100u32, 65534, 0]
            .into_iter()
            .find(|g| !me.private_group(*g))
            .expect("a group other than the user's private one")
    }

    #[test]
    fn private_folders_pass_and_missing_parts_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        chmod(&home, 0o700);
        check(&home.join("config/not/yet/config.toml")).unwrap();
        fs::write(home.join("f"), "x").unwrap();
        chmod(&home.join("f"), 0o644);
        check(&home.join("f")).unwrap();
    }

    #[test]
    fn world_writable_folder_or_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir_all(home.join("data")).unwrap();
        chmod(&home, 0o777);
        let err = check(&home.join("data/imm-daemon.db")).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, StrictError::Unsafe(u) if u.problem == Problem::Writable && u.path == fs::canonicalize(&home).unwrap()),
            "{text}"
        );
        assert!(text.contains("mode 0777"), "{text}");
        assert!(text.contains("chmod go-w"), "{text}");
        chmod(&home, 0o700);
        check(&home.join("data/imm-daemon.db")).unwrap();
        let file = home.join("data/config.toml");
        fs::write(&file, "").unwrap();
        chmod(&file, 0o666);
        let err = check(&file).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
    }

    #[test]
    fn a_symlink_is_judged_by_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(check(&link.join("x")).is_err());
    }

    #[test]
    fn a_root_folder_others_may_write_needs_the_sticky_bit() {
        if Me::current().uid != 0 {
            crate::skip_test(
                "a_root_folder_others_may_write_needs_the_sticky_bit",
                "a root-owned folder of our making needs root",
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777);
        check(&shared.join("mine")).unwrap();
        chmod(&shared, 0o777);
        assert!(check(&shared.join("mine")).is_err());
    }

    #[test]
    fn group_writable_is_refused_unless_the_group_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        chmod(&home, 0o770);
        let me = Me::current();
        let private = me.private_group(fs::metadata(&home).unwrap().gid());
        assert_eq!(check(&home).is_ok(), private);
        if me.uid == 0 {
            // Only root can give a folder a group it is not a member of.
            let gid = shared_gid();
            std::os::unix::fs::chown(&home, None, Some(gid)).unwrap();
            let err = check(&home).unwrap_err().to_string();
            assert!(err.contains("written by other users"), "{err}");
        } else {
            crate::skip_test(
                "group_writable_is_refused_unless_the_group_is_private (shared group part)",
                "giving a folder another group needs root",
            );
        }
    }

    #[test]
    fn another_users_folder_is_refused_naming_chown() {
        let me = Me::current();
        if me.uid != 0 {
            crate::skip_test(
                "another_users_folder_is_refused_naming_chown",
                "giving a folder to another user needs root",
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(65534), None).unwrap();
        // Root owns everything it may trust; a folder of another user's is still refused.
        let err = check(&home.join("data")).unwrap_err();
        assert!(
            matches!(&err, StrictError::Unsafe(u) if u.problem == Problem::Owner),
            "{err}"
        );
        assert!(err.to_string().contains("chown root"), "{err}");
    }
}
