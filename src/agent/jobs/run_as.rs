//! The user a job runs as: `runAs` in the node config (the agent and its shims run as root;
//! jobs do not).
//!
//! Guarantees:
//! - A job started with a [`RunAs`] that is not the shim's own user has, before `exec`, that
//!   user's uid, primary gid and supplementary groups (nothing of root's), `HOME`, `USER` and
//!   `LOGNAME` of that user (unless the Job's `env` sets them), and umask 022. The switch
//!   happens in the forked child; if any step fails the job does not start, and the attempt
//!   ends with a start error naming the user.
//! - With a workdir, the job enters it *as that user*, so a directory the user may not enter
//!   fails the start instead of leaving the job in a directory it cannot read.
//! - A job that runs as the shim's own user (no `runAs`, or `runAs` naming that user, as with
//!   `rift up` on a laptop) is started as before, with umask 022.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, User};

/// A resolved `runAs` user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups (from the group database, the primary one included).
    pub groups: Vec<Gid>,
    pub home: PathBuf,
}

/// Why jobs cannot run as the configured user.
#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    #[error("runAs: there is no user `{0}` on this machine; create it (config/install-node.sh does: useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {0}) or change runAs in the node config")]
    NoSuchUser(String),
    #[error("runAs: cannot look up user `{name}`: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("runAs: jobs should run as `{name}` (uid {uid}), but this agent runs as uid {euid} and cannot switch users: run the agent as root, or remove runAs to run jobs as the agent's own user")]
    CannotSwitch { name: String, uid: u32, euid: u32 },
}

impl RunAs {
    /// Looks up `name` (a user name, or a numeric uid) in the user database.
    pub fn resolve(name: &str) -> Result<RunAs, RunAsError> {
        let lookup = |source| RunAsError::Lookup {
            name: name.to_string(),
            source,
        };
        let user = match User::from_name(name).map_err(lookup)? {
            Some(u) => u,
            None => match name.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid))
                    .map_err(lookup)?
                    .ok_or_else(|| RunAsError::NoSuchUser(name.to_string()))?,
                Err(_) => return Err(RunAsError::NoSuchUser(name.to_string())),
            },
        };
        let groups = CString::new(user.name.as_str())
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, user.gid).ok())
            .unwrap_or_else(|| vec![user.gid]);
        Ok(RunAs {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir,
        })
    }

    /// Resolves `name` and checks that this process can start jobs as that user.
    pub fn resolve_usable(name: &str) -> Result<RunAs, RunAsError> {
        let r = RunAs::resolve(name)?;
        let euid = Uid::effective();
        if r.uid != euid && !euid.is_root() {
            return Err(RunAsError::CannotSwitch {
                name: r.name,
                uid: r.uid.as_raw(),
                euid: euid.as_raw(),
            });
        }
        Ok(r)
    }

    /// True when this is the user the current process runs as: nothing to switch.
    pub fn is_current(&self) -> bool {
        self.uid == Uid::effective()
    }
}

/// Prepares `cmd` to run as `run_as` (or as the current user when `None`) in `workdir`.
///
/// Must be called in a single-threaded process (the shim): the switch runs between `fork`
/// and `exec`.
pub fn prepare(cmd: &mut Command, run_as: Option<&RunAs>, workdir: Option<&str>) {
    let switch = run_as.filter(|r| !r.is_current()).cloned();
    let Some(user) = switch else {
        if let Some(w) = workdir {
            cmd.current_dir(w);
        }
        // SAFETY: umask is async-signal-safe and touches nothing shared.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
                Ok(())
            });
        }
        return;
    };
    let home = user.home.display().to_string();
    for (name, value) in [
        ("HOME", &home),
        ("USER", &user.name),
        ("LOGNAME", &user.name),
    ] {
        if !cmd.get_envs().any(|(k, _)| k == name) {
            cmd.env(name, value);
        }
    }
    let workdir = workdir.map(PathBuf::from);
    // SAFETY: runs in the forked child of a single-threaded process (the shim), so the
    // allocation `chdir` may make cannot meet a lock held by another thread; every other call
    // is a plain system call.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
            nix::unistd::setgroups(&user.groups)?;
            nix::unistd::setgid(user.gid)?;
            nix::unistd::setuid(user.uid)?;
            if let Some(w) = &workdir {
                nix::unistd::chdir(w.as_path())?;
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_name_or_uid_and_unknown_ones_say_how_to_create_them() {
        let root = RunAs::resolve("root").unwrap();
        assert_eq!(root.uid, Uid::from_raw(0));
        assert_eq!(RunAs::resolve("0").unwrap().name, "root");
        let err = RunAs::resolve("no-such-rift-user").unwrap_err().to_string();
        assert!(
            err.contains("useradd") && err.contains("no-such-rift-user"),
            "{err}"
        );
    }

    #[test]
    fn the_current_user_needs_no_switch() {
        let me = RunAs::resolve(&Uid::effective().as_raw().to_string()).unwrap();
        assert!(me.is_current());
        assert!(RunAs::resolve_usable(&me.name).is_ok());
    }
}
