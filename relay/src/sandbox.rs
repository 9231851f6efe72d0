//! Landlock sandbox: after start-up the relay forbids itself from writing to
//! any file anywhere, while still reading (certificates are re-read when they
//! change) and using the network.
//!
//! # Where to call it: from `main`, BEFORE the tokio runtime is built
//!
//! Landlock's `landlock_restrict_self(2)` restricts **only the calling thread**
//! and the threads and processes that thread creates **afterwards**. Threads
//! that already exist (siblings, the parent) stay unrestricted. So the relay
//! must call [`deny_writes`] on the main thread:
//!
//! 1. after loading its configuration and certificates and binding its sockets
//!    (binding a pathname Unix socket *creates a file*, so it must happen
//!    before; TCP/UDP sockets can be bound later as well, the network is not
//!    restricted);
//! 2. **before** building the tokio runtime, so every runtime worker thread and
//!    every `spawn_blocking` thread (created later by those workers) inherits
//!    the restriction. Do not use `#[tokio::main]`: it builds the runtime (and
//!    starts its worker threads) before the body of `main` runs.
//!
//! ```ignore
//! fn main() -> anyhow::Result<()> {
//!     let config = Config::load()?;                  // reads files
//!     let listeners = bind_listeners(&config)?;      // std::net sockets
//!     match sandbox::deny_writes()? {
//!         sandbox::Status::Enforced { abi } => tracing::info!(abi, "Landlock: writes denied"),
//!         other => tracing::warn!("Landlock: {other}"),   // carry on
//!     }
//!     let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//!     rt.block_on(run(config, listeners))
//! }
//! ```
//!
//! The `landlock` crate (0.4.8) also exposes
//! `RestrictSelfAttr::all_threads(true)`, i.e. the kernel flag
//! `LANDLOCK_RESTRICT_SELF_TSYNC` (Landlock ABI 8, Linux 7.0), which would
//! apply the domain to every thread of the process at once. This module
//! deliberately does **not** use it: on older kernels it is silently dropped
//! (it was not available on the development machine, Linux 6.18 = ABI 7), so
//! the call-order rule above is what guarantees coverage on every kernel.
//!
//! # What is denied, what stays allowed
//!
//! Denied everywhere (every right of this kind the running kernel knows):
//! opening a file for writing or appending (`write_file`), creating regular
//! files, directories, symlinks, FIFOs, sockets, char/block devices
//! (`make_*`), removing files and directories (`remove_*`), renaming or
//! linking across directories (`refer`, ABI 2; with ABI 1 this is always
//! denied anyway), truncating (`truncate`, ABI 3) and `ioctl(2)` on device
//! files (`ioctl_dev`, ABI 5). A rename inside one directory needs
//! `remove_file` + `make_reg` and is therefore denied too.
//!
//! Still allowed: reading files and directories, executing files, TCP/UDP
//! networking (no `AccessNet` right is handled), connecting to pathname Unix
//! sockets (`resolve_unix`, ABI 9, is not handled: it is no disk write),
//! signals and abstract Unix sockets (no scope is handled).
//!
//! Limits, by Landlock's design (the kernel enforces at `open(2)` time and on
//! path operations):
//! * file descriptors opened **before** the call keep their access mode
//!   (stdout/stderr stay writable; the relay must not hold writable file
//!   descriptors to disk files at that point);
//! * metadata changes are not covered: `chmod`, `chown`, `utimensat`,
//!   extended attributes, `FS_IOC_SETFLAGS` on regular files;
//! * `/dev/null` cannot be opened for writing afterwards either (e.g.
//!   `std::process::Command` with `Stdio::null()`).
//!
//! `PR_SET_NO_NEW_PRIVS` is also set on the calling thread (required by
//! Landlock for unprivileged callers; harmless for the relay, which runs no
//! set-uid programs). Root privileges (`CAP_DAC_OVERRIDE`, `CAP_SYS_ADMIN`)
//! do not bypass Landlock, and a Landlock-restricted thread cannot `mount(2)`.
//! The restriction cannot be undone; calling [`deny_writes`] again only stacks
//! an identical layer.

use std::fmt;

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, LandlockStatus, RestrictionStatus,
    Ruleset, RulesetAttr, RulesetError, RulesetStatus,
};

/// Newest Landlock ABI whose filesystem rights were reviewed for this module.
/// Raise it (and re-check [`denied_rights`]) when upgrading the crate.
const REVIEWED_ABI: ABI = ABI::V10;

/// Outcome of [`deny_writes`] on the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Status {
    /// Every write-type filesystem right known to this module is denied.
    Enforced {
        /// Landlock ABI version used: the lower of the kernel's and the
        /// `landlock` crate's newest ABI.
        abi: i32,
    },
    /// Landlock is enforced, but the kernel's ABI is too old to deny some
    /// write-type rights, which therefore stay allowed.
    PartiallyEnforced {
        /// Landlock ABI version used.
        abi: i32,
        /// Kernel names of the rights that could not be denied, e.g.
        /// `LANDLOCK_ACCESS_FS_TRUNCATE`.
        unrestricted: Vec<String>,
    },
    /// The kernel has no usable Landlock; nothing was restricted (apart from
    /// `PR_SET_NO_NEW_PRIVS`). The relay should warn and carry on.
    NotSupported {
        /// Why Landlock is unavailable and how to enable it.
        reason: String,
    },
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Enforced { abi } => {
                write!(f, "all file writes denied (Landlock ABI {abi})")
            }
            Self::PartiallyEnforced { abi, unrestricted } => write!(
                f,
                "file writes partly denied (Landlock ABI {abi}); still allowed: {}",
                unrestricted.join(", ")
            ),
            Self::NotSupported { reason } => {
                write!(f, "file writes NOT restricted: {reason}")
            }
        }
    }
}

/// Failure of [`deny_writes`]; the calling thread is not Landlock-restricted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// Declaring the handled rights or creating the ruleset file descriptor
    /// (`landlock_create_ruleset(2)`) failed.
    #[error("could not build the Landlock ruleset")]
    Build(#[source] RulesetError),
    /// `prctl(PR_SET_NO_NEW_PRIVS)` or `landlock_restrict_self(2)` failed.
    #[error("could not apply the Landlock ruleset to the calling thread")]
    Enforce(#[source] RulesetError),
    /// The kernel reports Landlock as available, yet nothing was enforced;
    /// reported as an error rather than as [`Status::NotSupported`] so that
    /// a broken sandbox never passes for a missing one.
    #[error("Landlock ABI {abi} is available but the ruleset was not enforced")]
    NotEnforced {
        /// Landlock ABI version reported by the kernel.
        abi: i32,
    },
}

/// Forbids the calling thread, and every thread or process it creates after
/// this call, from writing, creating, truncating, renaming or removing any
/// file anywhere; reading, executing and networking stay allowed.
///
/// Call it from `main` before building the tokio runtime: see the
/// [module documentation](self). Returns [`Status::NotSupported`] (not an
/// error) when the kernel lacks Landlock.
///
/// # Errors
///
/// [`SandboxError`] when the kernel supports Landlock but building or
/// applying the ruleset failed; the thread is then not restricted.
pub fn deny_writes() -> Result<Status, SandboxError> {
    let wanted = denied_rights();
    let created = Ruleset::default()
        // Best effort: deny what the running kernel knows, report the rest.
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(wanted)
        .and_then(Ruleset::create)
        .map_err(SandboxError::Build)?;
    // No rule is added: the handled (write) rights are denied everywhere,
    // the unhandled ones (read, execute, network...) are allowed everywhere.
    let status = created.restrict_self().map_err(SandboxError::Enforce)?;
    to_status(&status, wanted)
}

/// Filesystem rights denied by [`deny_writes`], for [`REVIEWED_ABI`].
fn denied_rights() -> BitFlags<AccessFs> {
    // `resolve_unix` (connecting to a pathname Unix socket) writes nothing.
    AccessFs::from_write(REVIEWED_ABI) & !AccessFs::ResolveUnix
}

fn to_status(
    status: &RestrictionStatus,
    wanted: BitFlags<AccessFs>,
) -> Result<Status, SandboxError> {
    let abi = match status.landlock {
        LandlockStatus::NotImplemented => {
            return Ok(Status::NotSupported {
                reason: "the kernel has no Landlock (ENOSYS): build it with \
                         CONFIG_SECURITY_LANDLOCK=y (Linux 5.13 or later)"
                    .into(),
            });
        }
        LandlockStatus::NotEnabled => {
            return Ok(Status::NotSupported {
                reason: "Landlock is built into the kernel but disabled (EOPNOTSUPP): \
                         add `landlock` to the `lsm=` boot parameter"
                    .into(),
            });
        }
        LandlockStatus::Available { effective_abi, .. } => effective_abi,
    };
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(Status::Enforced { abi: abi as i32 }),
        RulesetStatus::PartiallyEnforced => Ok(Status::PartiallyEnforced {
            abi: abi as i32,
            unrestricted: unrestricted_rights(abi, wanted),
        }),
        RulesetStatus::NotEnforced => Err(SandboxError::NotEnforced { abi: abi as i32 }),
    }
}

/// Rights in `wanted` that the kernel's `abi` cannot deny.
fn unrestricted_rights(abi: ABI, wanted: BitFlags<AccessFs>) -> Vec<String> {
    let mut missing = wanted & !AccessFs::from_all(abi);
    if abi == ABI::V1 {
        // ABI 1 always denies reparenting (cross-directory rename/link).
        missing.remove(AccessFs::Refer);
    }
    missing.iter().map(kernel_name).collect()
}

fn kernel_name(right: AccessFs) -> String {
    let name = match right {
        AccessFs::Execute => "EXECUTE",
        AccessFs::WriteFile => "WRITE_FILE",
        AccessFs::ReadFile => "READ_FILE",
        AccessFs::ReadDir => "READ_DIR",
        AccessFs::RemoveDir => "REMOVE_DIR",
        AccessFs::RemoveFile => "REMOVE_FILE",
        AccessFs::MakeChar => "MAKE_CHAR",
        AccessFs::MakeDir => "MAKE_DIR",
        AccessFs::MakeReg => "MAKE_REG",
        AccessFs::MakeSock => "MAKE_SOCK",
        AccessFs::MakeFifo => "MAKE_FIFO",
        AccessFs::MakeBlock => "MAKE_BLOCK",
        AccessFs::MakeSym => "MAKE_SYM",
        AccessFs::Refer => "REFER",
        AccessFs::Truncate => "TRUNCATE",
        AccessFs::IoctlDev => "IOCTL_DEV",
        AccessFs::ResolveUnix => "RESOLVE_UNIX",
        other => return format!("{other:?}"),
    };
    format!("LANDLOCK_ACCESS_FS_{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the denied set: a crate upgrade that changes it must be reviewed.
    #[test]
    fn denied_rights_are_exactly_the_write_rights() {
        let expected = AccessFs::WriteFile
            | AccessFs::RemoveDir
            | AccessFs::RemoveFile
            | AccessFs::MakeChar
            | AccessFs::MakeDir
            | AccessFs::MakeReg
            | AccessFs::MakeSock
            | AccessFs::MakeFifo
            | AccessFs::MakeBlock
            | AccessFs::MakeSym
            | AccessFs::Refer
            | AccessFs::Truncate
            | AccessFs::IoctlDev;
        assert_eq!(denied_rights(), expected);
        let allowed = AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::Execute;
        assert!((denied_rights() & allowed).is_empty());
    }

    #[test]
    fn old_abis_report_what_stays_allowed() {
        let wanted = denied_rights();
        assert_eq!(
            unrestricted_rights(ABI::V1, wanted),
            [
                "LANDLOCK_ACCESS_FS_TRUNCATE",
                "LANDLOCK_ACCESS_FS_IOCTL_DEV"
            ]
        );
        assert_eq!(
            unrestricted_rights(ABI::V2, wanted),
            [
                "LANDLOCK_ACCESS_FS_TRUNCATE",
                "LANDLOCK_ACCESS_FS_IOCTL_DEV"
            ]
        );
        assert_eq!(
            unrestricted_rights(ABI::V4, wanted),
            ["LANDLOCK_ACCESS_FS_IOCTL_DEV"]
        );
        assert!(unrestricted_rights(ABI::V5, wanted).is_empty());
        assert!(unrestricted_rights(ABI::V7, wanted).is_empty());
    }

    #[test]
    fn display_is_loggable() {
        let s = Status::PartiallyEnforced {
            abi: 4,
            unrestricted: vec!["LANDLOCK_ACCESS_FS_IOCTL_DEV".into()],
        };
        assert_eq!(
            s.to_string(),
            "file writes partly denied (Landlock ABI 4); still allowed: LANDLOCK_ACCESS_FS_IOCTL_DEV"
        );
    }
}
