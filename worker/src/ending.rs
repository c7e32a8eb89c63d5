//! How a run's execution ended, whatever executed it, and the one mapping from that to the
//! run's status, exit code, reason and detail. Executors only say *what happened*
//! ([`Termination`]); every word a user reads about it is written here, once.

use coderun_shared::runs::{Reason, RunStatus};

/// What happened to a run's program, as its executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// The program ended by itself with this exit code (128 + signal when a signal killed it).
    Exited(i32),
    /// The sandbox's own first process died of this signal: not the program's doing.
    SandboxSignaled(i32),
    /// The memory limit killed it.
    OomKilled,
    /// Still running at its wall time: killed.
    DeadlineExceeded,
    /// Its log passed `runs.log_max_bytes`: killed, the log cut.
    OutputLimitExceeded,
    /// Its files filled the spec's disk budget (local executor).
    DiskLimitExceeded,
    /// Its pod was evicted or disrupted (Kubernetes), for this reason.
    Evicted(String),
    /// Killed because a stop was requested.
    Stopped,
    /// A stop came before the program started.
    StoppedBeforeStart,
    /// A stop deleted its execution, which is gone now.
    StoppedExecutionDeleted,
    /// Its image could not be pulled for `image_pull_timeout_seconds`.
    ImagePullFailed(String),
    /// Fetching the code or the datasets failed: the program never started.
    FetchFailed(String),
    /// The executor could not execute it at all (the host's or the request's fault).
    LaunchFailed(String),
    /// The execution failed and nothing tells why.
    ExecutionFailed(String),
    /// The execution vanished without a stop.
    ExecutionVanished,
}

/// How the run ends: what the recorder writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub reason: Option<Reason>,
    pub detail: String,
    /// Bytes of `log.txt`, when known.
    pub log_bytes: Option<i64>,
    /// `log.txt` was cut at `runs.log_max_bytes`.
    pub log_truncated: bool,
}

impl Ending {
    /// The log this ending was written with: `bytes` long, cut or not.
    pub fn with_log(mut self, bytes: u64, truncated: bool) -> Self {
        self.log_bytes = Some(bytes as i64);
        self.log_truncated |= truncated;
        self
    }

    /// Outputs were refused for `why`: a run that had no reason of its own fails for that.
    pub fn with_refused_outputs(mut self, why: impl std::fmt::Display) -> Self {
        if self.reason.is_none() {
            self.status = RunStatus::Failed;
            self.reason = Some(Reason::OutputLimitExceeded);
        }
        self.detail = format!("{}; {why}", self.detail);
        self
    }
}

impl From<Termination> for Ending {
    fn from(termination: Termination) -> Self {
        use Termination as T;
        let failed = |reason: Option<Reason>, exit_code: Option<i32>, detail: String| Ending {
            status: RunStatus::Failed,
            exit_code,
            reason,
            detail,
            log_bytes: None,
            log_truncated: false,
        };
        match termination {
            T::Exited(0) => Ending {
                status: RunStatus::Succeeded,
                exit_code: Some(0),
                reason: None,
                detail: "exited with 0".into(),
                log_bytes: None,
                log_truncated: false,
            },
            T::Exited(code) => failed(None, Some(code), format!("exited with {code}")),
            T::SandboxSignaled(signal) => failed(
                None,
                Some(128 + signal),
                format!("the sandbox died of signal {signal}"),
            ),
            T::OomKilled => failed(
                Some(Reason::OomKilled),
                Some(137),
                "killed: out of memory".into(),
            ),
            T::DeadlineExceeded => failed(
                Some(Reason::DeadlineExceeded),
                None,
                "killed: wall time exceeded".into(),
            ),
            T::OutputLimitExceeded => Ending {
                log_truncated: true,
                ..failed(
                    Some(Reason::OutputLimitExceeded),
                    None,
                    "killed: log limit exceeded".into(),
                )
            },
            T::DiskLimitExceeded => failed(
                Some(Reason::Evicted),
                None,
                "disk limit exceeded: the run's files filled its disk budget".into(),
            ),
            T::Evicted(why) => failed(Some(Reason::Evicted), None, format!("evicted: {why}")),
            T::Stopped => failed(Some(Reason::StoppedByUser), None, "killed: stopped".into()),
            T::StoppedBeforeStart => Ending {
                log_bytes: Some(0),
                ..failed(
                    Some(Reason::StoppedByUser),
                    None,
                    "stopped before the program started".into(),
                )
            },
            T::StoppedExecutionDeleted => Ending {
                status: RunStatus::Stopped,
                ..failed(
                    Some(Reason::StoppedByUser),
                    None,
                    "stopped: its Job was deleted".into(),
                )
            },
            T::ImagePullFailed(why) => failed(
                Some(Reason::ImagePullFailed),
                None,
                format!("the image cannot be pulled: {why}"),
            ),
            T::FetchFailed(why) => failed(
                Some(Reason::LaunchFailed),
                None,
                format!("fetching the code or datasets failed: {why}"),
            ),
            T::LaunchFailed(why) => failed(Some(Reason::LaunchFailed), None, why),
            T::ExecutionFailed(why) => failed(
                Some(Reason::ExecutorLost),
                None,
                format!("the Job failed: {why}"),
            ),
            T::ExecutionVanished => failed(
                Some(Reason::ExecutorLost),
                None,
                "its Job disappeared".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_zero_exit_succeeds() {
        assert_eq!(
            Ending::from(Termination::Exited(0)).status,
            RunStatus::Succeeded
        );
        let failed = Ending::from(Termination::Exited(3));
        assert_eq!(
            (failed.status, failed.exit_code, failed.reason),
            (RunStatus::Failed, Some(3), None)
        );
    }

    #[test]
    fn each_limit_has_its_reason() {
        for (termination, reason) in [
            (Termination::OomKilled, Reason::OomKilled),
            (Termination::DeadlineExceeded, Reason::DeadlineExceeded),
            (
                Termination::OutputLimitExceeded,
                Reason::OutputLimitExceeded,
            ),
            (Termination::DiskLimitExceeded, Reason::Evicted),
            (Termination::Evicted("disk".into()), Reason::Evicted),
            (Termination::Stopped, Reason::StoppedByUser),
            (Termination::FetchFailed("22".into()), Reason::LaunchFailed),
            (Termination::ExecutionVanished, Reason::ExecutorLost),
        ] {
            let ending = Ending::from(termination.clone());
            assert_eq!(ending.status, RunStatus::Failed, "{termination:?}");
            assert_eq!(ending.reason, Some(reason), "{termination:?}");
        }
        assert_eq!(Ending::from(Termination::OomKilled).exit_code, Some(137));
        assert!(Ending::from(Termination::OutputLimitExceeded).log_truncated);
    }

    #[test]
    fn a_deleted_execution_that_was_being_stopped_ends_stopped() {
        let ending = Ending::from(Termination::StoppedExecutionDeleted);
        assert_eq!(ending.status, RunStatus::Stopped);
        assert_eq!(ending.reason, Some(Reason::StoppedByUser));
    }

    #[test]
    fn refused_outputs_fail_a_run_only_when_it_had_no_reason_of_its_own() {
        let ok = Ending::from(Termination::Exited(0)).with_refused_outputs("too large");
        assert_eq!(ok.status, RunStatus::Failed);
        assert_eq!(ok.reason, Some(Reason::OutputLimitExceeded));
        assert_eq!(ok.detail, "exited with 0; too large");
        let oom = Ending::from(Termination::OomKilled).with_refused_outputs("too large");
        assert_eq!(oom.reason, Some(Reason::OomKilled));
    }
}
