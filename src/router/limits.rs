//! File descriptors for the router's connections: every connection is a
//! socket, so `--max-connections` needs as many descriptors, plus a few
//! for the listener, the queue's files, Redis and the connections being
//! refused. At start the router raises its soft `RLIMIT_NOFILE` to the
//! hard limit (and, when it is privileged, the hard limit to what it
//! needs); when that is still too few it says so with the fix
//! (`ulimit -n`, systemd's `LimitNOFILE=`) instead of failing accepts
//! under load. [`plan`] and [`fallback`] decide, [`raise`] does it.

/// Descriptors kept beside the connections: the listener, the queue's
/// database, WAL and shared-memory files, Redis connections, stdio, the
/// runtime's own, and connections accepted only to be refused (over the
/// limit, health checks, metrics scrapes).
pub const RESERVED_FDS: u64 = 256;

/// "No limit" as `getrlimit` reports it.
pub const UNLIMITED: u64 = u64::MAX;

/// The descriptor limits a process runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    /// What the process may open now (`ulimit -Sn`).
    pub soft: u64,
    /// What an unprivileged process may raise its soft limit to
    /// (`ulimit -Hn`).
    pub hard: u64,
    /// The kernel's ceiling for any process (`fs.nr_open` on Linux), when
    /// known.
    pub ceiling: Option<u64>,
}

/// Descriptors `max_connections` connections need.
pub fn needed(max_connections: usize) -> u64 {
    u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVED_FDS)
}

/// What to do with the limits at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdPlan {
    /// The soft limit is already as high as it can go without privilege
    /// and enough.
    Keep,
    /// Raise the soft limit to `soft` (the hard limit; what is needed, or
    /// the kernel's ceiling, when the hard limit is unlimited).
    RaiseSoft {
        /// The new soft limit.
        soft: u64,
    },
    /// The hard limit is too low: raise both to `to`, which only a
    /// privileged process (`CAP_SYS_RESOURCE`) may; if refused, see
    /// [`fallback`].
    RaiseHard {
        /// The new soft and hard limit.
        to: u64,
    },
    /// More than the kernel allows any process (`fs.nr_open`).
    Impossible,
}

/// What to do with `limits` for `max_connections`: always take the soft
/// limit up to the hard one (connections beyond the limit are refused
/// with `too-many-connections`, which needs a descriptor too).
pub fn plan(limits: FdLimits, max_connections: usize) -> FdPlan {
    let needed = needed(max_connections);
    if limits.ceiling.is_some_and(|c| needed > c) {
        return FdPlan::Impossible;
    }
    if limits.hard < needed {
        return FdPlan::RaiseHard { to: needed };
    }
    let target = if limits.hard == UNLIMITED {
        limits.ceiling.unwrap_or(needed).max(needed)
    } else {
        limits.hard
    };
    if limits.soft >= target {
        FdPlan::Keep
    } else {
        FdPlan::RaiseSoft { soft: target }
    }
}

/// When the limit cannot be raised far enough: with `--max-connections`
/// given (`explicit`), the router refuses to start ([`FdError`]); with the
/// default, it serves as many connections as `soft` (the soft limit it
/// got) allows, at least one.
pub fn fallback(soft: u64, max_connections: usize, explicit: bool) -> Result<usize, NotEnough> {
    if needed(max_connections) <= soft {
        return Ok(max_connections);
    }
    if explicit {
        return Err(NotEnough);
    }
    let fit = soft.saturating_sub(RESERVED_FDS).max(1);
    Ok(usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .min(max_connections))
}

/// [`fallback`]'s refusal: the explicit `--max-connections` does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotEnough;

/// The router cannot have the descriptors `--max-connections` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdError {
    /// What was asked for.
    pub max_connections: usize,
    /// Descriptors it needs.
    pub needed: u64,
    /// The limits after raising what could be raised.
    pub limits: FdLimits,
}

impl std::fmt::Display for FdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let FdError {
            max_connections,
            needed,
            limits,
        } = self;
        write!(
            f,
            "--max-connections {max_connections} needs {needed} file descriptors (one per \
             connection and {RESERVED_FDS} for the router itself), but this process may open \
             only {soft} (soft limit {soft}, hard limit {hard}",
            soft = show(limits.soft),
            hard = show(limits.hard),
        )?;
        if let Some(c) = limits.ceiling {
            write!(f, ", kernel maximum fs.nr_open {c}")?;
        }
        write!(
            f,
            ") and cannot raise it further. Raise the limit where the router starts: \
             `ulimit -n {needed}` in its shell (above the hard limit only as root, e.g. through \
             /etc/security/limits.conf), or `LimitNOFILE={needed}` in its systemd unit"
        )?;
        if limits.ceiling.is_some_and(|c| *needed > c) {
            write!(
                f,
                ", after raising the kernel's maximum: `sysctl -w fs.nr_open={needed}`"
            )?;
        }
        let fits = limits.soft.saturating_sub(RESERVED_FDS).max(1);
        write!(f, "; or lower --max-connections to {fits}")
    }
}

impl std::error::Error for FdError {}

/// A limit as `ulimit` shows it.
fn show(limit: u64) -> String {
    if limit == UNLIMITED {
        "unlimited".to_owned()
    } else {
        limit.to_string()
    }
}

/// What [`raise`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The limits before.
    pub before: FdLimits,
    /// The limits now.
    pub after: FdLimits,
    /// Connections the router may serve: `max_connections`, or fewer when
    /// it was the default and the limit allows fewer.
    pub max_connections: usize,
}

/// The process's descriptor limits, or `None` where they cannot be read
/// (not a Unix).
pub fn current() -> Option<FdLimits> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse().ok());
    Some(FdLimits {
        soft,
        hard,
        ceiling,
    })
}

/// Raises this process's descriptor limit for `max_connections`
/// connections ([`plan`]); `explicit` says whether the operator asked for
/// that many (see [`fallback`]). Where limits cannot be read, nothing is
/// changed.
pub fn raise(max_connections: usize, explicit: bool) -> Result<Option<Raised>, FdError> {
    let Some(before) = current() else {
        return Ok(None);
    };
    let set = |soft: u64, hard: u64| rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard);
    match plan(before, max_connections) {
        FdPlan::Keep => {}
        FdPlan::RaiseSoft { soft } => {
            let _ = set(soft, before.hard);
        }
        FdPlan::RaiseHard { to } => {
            if set(to, to).is_err() {
                // Unprivileged: as far as the hard limit goes.
                let _ = set(before.hard, before.hard);
            }
        }
        FdPlan::Impossible => {
            if before.soft < before.hard {
                let _ = set(before.hard, before.hard);
            }
        }
    }
    let after = current().unwrap_or(before);
    match fallback(after.soft, max_connections, explicit) {
        Ok(max_connections) => Ok(Some(Raised {
            before,
            after,
            max_connections,
        })),
        Err(NotEnough) => Err(FdError {
            max_connections,
            needed: needed(max_connections),
            limits: after,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(soft: u64, hard: u64, ceiling: Option<u64>) -> FdLimits {
        FdLimits {
            soft,
            hard,
            ceiling,
        }
    }

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one() {
        // Enough already, but the soft limit still goes to the hard one.
        assert_eq!(
            plan(limits(1024, 524_288, Some(1_048_576)), 100),
            FdPlan::RaiseSoft { soft: 524_288 }
        );
        assert_eq!(
            plan(limits(1024, 524_288, None), 100_000),
            FdPlan::RaiseSoft { soft: 524_288 }
        );
        assert_eq!(
            plan(limits(524_288, 524_288, Some(1_048_576)), 100_000),
            FdPlan::Keep
        );
    }

    #[test]
    fn an_unlimited_hard_limit_is_taken_to_the_kernel_ceiling() {
        assert_eq!(
            plan(limits(1024, UNLIMITED, Some(1_048_576)), 20_000),
            FdPlan::RaiseSoft { soft: 1_048_576 }
        );
        // Without a known ceiling: what is needed.
        assert_eq!(
            plan(limits(1024, UNLIMITED, None), 20_000),
            FdPlan::RaiseSoft { soft: 20_256 }
        );
        assert_eq!(
            plan(limits(UNLIMITED, UNLIMITED, None), 20_000),
            FdPlan::Keep
        );
    }

    #[test]
    fn a_hard_limit_too_low_needs_privilege() {
        assert_eq!(
            plan(limits(20_000, 20_000, Some(1_048_576)), 100_000),
            FdPlan::RaiseHard { to: 100_256 }
        );
        // The reserve counts: 20,000 connections need more than 20,000.
        assert_eq!(
            plan(limits(20_000, 20_000, None), 20_000),
            FdPlan::RaiseHard { to: 20_256 }
        );
    }

    #[test]
    fn beyond_the_kernel_ceiling_is_impossible() {
        assert_eq!(
            plan(limits(1024, UNLIMITED, Some(1_048_576)), 2_000_000),
            FdPlan::Impossible
        );
        assert_eq!(
            plan(limits(1024, 4096, Some(1_048_576)), usize::MAX),
            FdPlan::Impossible
        );
    }

    #[test]
    fn an_explicit_limit_that_does_not_fit_is_refused_and_the_default_shrinks() {
        assert_eq!(fallback(100_256, 100_000, true), Ok(100_000));
        assert_eq!(fallback(100_256, 100_000, false), Ok(100_000));
        assert_eq!(fallback(4096, 20_000, true), Err(NotEnough));
        assert_eq!(fallback(4096, 20_000, false), Ok(4096 - 256));
        // A tiny limit still serves one connection.
        assert_eq!(fallback(16, 20_000, false), Ok(1));
    }

    #[test]
    fn the_error_names_the_limits_and_the_fixes() {
        let e = FdError {
            max_connections: 100_000,
            needed: 100_256,
            limits: limits(20_000, 20_000, Some(1_048_576)),
        };
        let text = e.to_string();
        for part in [
            "--max-connections 100000 needs 100256 file descriptors",
            "soft limit 20000, hard limit 20000, kernel maximum fs.nr_open 1048576",
            "`ulimit -n 100256`",
            "`LimitNOFILE=100256`",
            "lower --max-connections to 19744",
        ] {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }
        assert!(!text.contains("sysctl"), "{text}");
        let e = FdError {
            max_connections: 2_000_000,
            needed: 2_000_256,
            limits: limits(1_048_576, UNLIMITED, Some(1_048_576)),
        };
        let text = e.to_string();
        assert!(text.contains("hard limit unlimited"), "{text}");
        assert!(text.contains("`sysctl -w fs.nr_open=2000256`"), "{text}");
    }
}
