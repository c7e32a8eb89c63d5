//! Start-up checks: can this host confine untrusted code? Builds the [`Sandbox`] only if so.
//!
//! The rule it keeps: the worker fails loudly with an actionable message (what is missing,
//! where we looked, what to install or enable) instead of ever running code unconfined. The
//! last check is a real trial run of `true` through the whole chain — cgroup, uid, rlimits,
//! bubblewrap — so whatever the individual checks miss still stops the worker here.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::{getegid, geteuid};
use uuid::Uuid;

use super::cgroup::{Cgroups, FavorMoves};
use super::command::{Identity, Launch, Tools};
use super::runtime::Runtime;
use super::uids::UidPool;
use super::{Limits, RunLayout, Sandbox, SandboxConfig, procs};

/// Why this host cannot run the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{tool} not found (looked at {looked}): {hint}")]
    MissingTool {
        tool: &'static str,
        looked: String,
        hint: &'static str,
    },
    #[error(
        "user namespaces are not available to unprivileged users ({detail}); bubblewrap needs \
         them: {hint}"
    )]
    UserNamespaces { detail: String, hint: &'static str },
    #[error(
        "no memory cgroup writable at {path}: {reason}. The sandbox needs a cgroup (v1 memory \
         hierarchy or v2 with the memory controller delegated) in which the worker may create \
         child cgroups; run the worker as root or in a delegated cgroup"
    )]
    NoMemoryCgroup { path: String, reason: String },
    #[error("the sandbox does not start on this host: {detail}\n  command: {command}")]
    TrialRun { command: String, detail: String },
    #[error(
        "the language runtime {name:?} is missing or broken at {path} ({detail}): {}",
        super::runtime::BUILD_HINT
    )]
    MissingRuntime {
        name: String,
        path: String,
        detail: String,
    },
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn find_tool(
    tool: &'static str,
    configured: Option<&Path>,
    hint: &'static str,
) -> Result<PathBuf, PreflightError> {
    let candidates: Vec<PathBuf> = match configured {
        Some(path) => vec![path.to_path_buf()],
        None => ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(tool))
            .collect(),
    };
    candidates
        .iter()
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .cloned()
        .ok_or_else(|| PreflightError::MissingTool {
            tool,
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            hint,
        })
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn check_user_namespaces() -> Result<(), PreflightError> {
    if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Err(PreflightError::UserNamespaces {
            detail: "user.max_user_namespaces = 0".into(),
            hint: "sysctl -w user.max_user_namespaces=15000",
        });
    }
    if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Err(PreflightError::UserNamespaces {
            detail: "kernel.unprivileged_userns_clone = 0".into(),
            hint: "sysctl -w kernel.unprivileged_userns_clone=1",
        });
    }
    if read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        return Err(PreflightError::UserNamespaces {
            detail: "kernel.apparmor_restrict_unprivileged_userns = 1".into(),
            hint: "allow bwrap an AppArmor profile with `userns` (or sysctl -w \
                   kernel.apparmor_restrict_unprivileged_userns=0)",
        });
    }
    Ok(())
}

/// The uid range must belong to nobody else on this host: no user or group of `/etc/passwd`
/// and `/etc/group` (a run's gid is its uid), and no range `/etc/subuid` or `/etc/subgid` hands
/// to a user's containers — a container of that user could otherwise own a run's files or
/// signal its processes.
fn check_uid_range(config: &SandboxConfig) -> Result<(), PreflightError> {
    check_uid_range_in(config, Path::new("/etc"))
}

/// [`check_uid_range`] against the four files under `etc` (a missing file holds nobody).
fn check_uid_range_in(config: &SandboxConfig, etc: &Path) -> Result<(), PreflightError> {
    if config.uid_count == 0 {
        return Err(PreflightError::Config(
            "uid_count must be at least 1".into(),
        ));
    }
    let end = config
        .uid_base
        .checked_add(config.uid_count)
        .filter(|&e| e < 0xFFFF_0000);
    if config.uid_base < 1000 || end.is_none() {
        return Err(PreflightError::Config(format!(
            "uid_base {} + uid_count {} is not a range of unprivileged uids",
            config.uid_base, config.uid_count
        )));
    }
    let end = u64::from(end.unwrap_or(u32::MAX));
    let base = u64::from(config.uid_base);
    let read = |name: &str| std::fs::read_to_string(etc.join(name)).unwrap_or_default();
    let clash = |what: String| {
        PreflightError::Config(format!(
            "sandbox uids {base}..{end} (worker.sandbox_uid_base and worker.local_slots) overlap \
             {what}; choose another uid_base"
        ))
    };
    for (file, kind) in [("passwd", "user"), ("group", "group")] {
        for line in read(file).lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let Some(id) = fields.get(2).and_then(|u| u.parse::<u64>().ok())
                && (base..end).contains(&id)
            {
                return Err(clash(format!(
                    "the host {kind} {:?} (id {id}) in {}",
                    fields[0],
                    etc.join(file).display()
                )));
            }
        }
    }
    // `name:first:count`: the ids first .. first + count belong to that user's containers.
    for file in ["subuid", "subgid"] {
        for line in read(file).lines() {
            let fields: Vec<&str> = line.trim().split(':').collect();
            let [owner, first, count] = fields[..] else {
                continue;
            };
            let (Ok(first), Ok(count)) = (first.parse::<u64>(), count.parse::<u64>()) else {
                continue;
            };
            if first < end && base < first + count {
                return Err(clash(format!(
                    "the range {first}..{} that {} gives to {owner:?}",
                    first + count,
                    etc.join(file).display()
                )));
            }
        }
    }
    Ok(())
}

pub(super) fn build(config: SandboxConfig) -> Result<Sandbox, PreflightError> {
    let root = geteuid().is_root();
    let tools = Tools {
        sh: find_tool("sh", None, "a POSIX shell is required at /bin/sh")?,
        bwrap: find_tool(
            "bwrap",
            config.bwrap.as_deref(),
            "install bubblewrap: apt-get install bubblewrap",
        )?,
        prlimit: find_tool(
            "prlimit",
            None,
            "install util-linux: apt-get install util-linux",
        )?,
        setpriv: find_tool(
            "setpriv",
            None,
            "install util-linux: apt-get install util-linux",
        )?,
    };
    let runtimes = load_runtimes(&config)?;
    check_user_namespaces()?;
    if root {
        check_uid_range(&config)?;
    }
    if config.cgroup_name.is_empty()
        || config.cgroup_name.contains('/')
        || config.cgroup_name.starts_with('.')
    {
        return Err(PreflightError::Config(format!(
            "cgroup_name {:?} must be a plain folder name",
            config.cgroup_name
        )));
    }
    let cgroups =
        Cgroups::discover(&config.cgroup_name).map_err(|u| PreflightError::NoMemoryCgroup {
            path: u.path,
            reason: u.reason,
        })?;
    if !cgroups.has_pids() && !root {
        tracing::warn!(
            "no pids cgroup and not root: the number of processes of a run is not limited"
        );
    }

    if root {
        match super::cgroup::favor_moves() {
            FavorMoves::Already => tracing::debug!("cgroup moves favoured already (favordynmods)"),
            FavorMoves::Mounted => tracing::info!(
                at = super::cgroup::FAVOR_MOUNT,
                "cgroup moves favoured: mounted a hierarchy with favordynmods"
            ),
            FavorMoves::Unavailable(why) => tracing::info!(
                %why,
                "cgroup moves not favoured: each run's start waits for an RCU grace period"
            ),
        }
    }
    let uids = root.then(|| UidPool::new(config.uid_base, config.uid_count));
    if let Some(pool) = &uids {
        for uid in pool.uids() {
            procs::kill_uid(uid);
        }
    }
    cgroups.remove_stale();

    let filters = super::seccomp::build().map_err(|e| PreflightError::Config(e.to_string()))?;
    let sandbox = Sandbox {
        runtimes,
        tools,
        cgroups,
        uids,
        filters,
        // Mounting a tmpfs needs root; a worker that is not root keeps the walked budget.
        mounts: root,
        worker_uid: geteuid().as_raw(),
        worker_gid: getegid().as_raw(),
        config,
    };
    // Each runtime once: a root filesystem that cannot start a shell stops the worker here.
    let mut tried = std::collections::BTreeSet::new();
    for runtime in sandbox.runtimes.values() {
        if tried.insert(runtime.name.clone()) {
            trial_run(&sandbox, runtime)?;
        }
    }
    if !root {
        tracing::warn!(
            "not root: runs' folders are on host disk and their disk budget is only measured \
             by walking them"
        );
    }
    tracing::info!(cgroups = %sandbox.cgroups.describe(), root, "sandbox ready");
    Ok(sandbox)
}

/// Each configured language's runtime, loaded once per runtime.
fn load_runtimes(
    config: &SandboxConfig,
) -> Result<std::collections::BTreeMap<String, Arc<Runtime>>, PreflightError> {
    if config.languages.is_empty() {
        return Err(PreflightError::Config(
            "no language runtimes configured (languages)".into(),
        ));
    }
    let mut loaded: std::collections::BTreeMap<String, Arc<Runtime>> = Default::default();
    let mut by_language = std::collections::BTreeMap::new();
    for (language, name) in &config.languages {
        let safe = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !safe {
            return Err(PreflightError::Config(format!(
                "language {language:?}: runtime {name:?} is not a plain name"
            )));
        }
        let runtime = match loaded.get(name) {
            Some(runtime) => runtime.clone(),
            None => {
                let runtime = Arc::new(Runtime::load(name, &config.runtimes_dir)?);
                loaded.insert(name.clone(), runtime.clone());
                runtime
            }
        };
        by_language.insert(language.clone(), runtime);
    }
    Ok(by_language)
}

/// `true` through the whole chain in `runtime`, exactly as a run starts it.
fn trial_run(sandbox: &Sandbox, runtime: &Runtime) -> Result<(), PreflightError> {
    let io = |context: &str| {
        let context = context.to_string();
        move |source| PreflightError::Io { context, source }
    };
    let lease = sandbox.uids.as_ref().and_then(|pool| pool.acquire());
    let identity = match &lease {
        Some(lease) => Identity::Drop {
            uid: lease.uid(),
            gid: lease.uid(),
        },
        None => Identity::Keep {
            uid: sandbox.worker_uid,
            gid: sandbox.worker_gid,
        },
    };
    let run_id = Uuid::new_v4();
    let dir = std::env::temp_dir().join(format!("coderun-preflight-{run_id}"));
    let layout = RunLayout::new(&dir);
    let (uid, gid) = identity.ids();
    let limits = Limits {
        cpu_millis: 1000,
        memory_mib: 64,
        disk_mib: 1,
        pids: 16,
        wall_seconds: 10,
    };
    let prepared = layout.prepare(
        uid,
        gid,
        run_id,
        (sandbox.worker_uid, sandbox.worker_gid),
        sandbox.fs_spec(&limits),
        &sandbox.filters,
    );
    if let Err(e) = prepared {
        let _ = super::runfs::remove_work_dir(&dir);
        return Err(PreflightError::TrialRun {
            command: "preparing a work dir (and its tmpfs)".into(),
            detail: e.to_string(),
        });
    }
    let result = (|| {
        let cgroup = sandbox
            .cgroups
            .create(&format!("preflight-run-{run_id}"), &limits)
            .map_err(|e| PreflightError::NoMemoryCgroup {
                path: sandbox.cgroups.describe(),
                reason: e.to_string(),
            })?;
        let launch = Launch {
            tools: &sandbox.tools,
            runtime,
            config: &sandbox.config,
            identity,
            cgroup_procs: cgroup.procs_files(),
            limits,
            run_id,
            attempt: 1,
            code_dir: layout.code(),
            output_dir: layout.output(),
            scratch: sandbox.mounts.then(|| (layout.tmp(), layout.shm())),
            etc_dir: layout.etc(),
            seccomp: layout.seccomp(),
            datasets: &[],
            inputs: None,
            env: &[],
            command: "true",
        };
        let argv = launch.argv();
        let shown = argv
            .iter()
            .map(|a| a.to_string_lossy().replace('\n', " "))
            .collect::<Vec<_>>()
            .join(" ");
        let started = Instant::now();
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("starting the trial run"))?;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(io("waiting for the trial run"))? {
                break status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                cgroup.destroy();
                return Err(PreflightError::TrialRun {
                    command: shown,
                    detail: "did not finish within 10 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let elapsed = started.elapsed();
        let mut output = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut output);
        }
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut output);
        }
        cgroup.destroy();
        if !status.success() {
            let output = output.trim();
            let hint = if output.contains("--disable-userns") {
                " (bubblewrap 0.8 or newer is needed)"
            } else if output.contains("uid map") || output.contains("namespace") {
                " (user namespaces are not usable: check user.max_user_namespaces, \
                  kernel.unprivileged_userns_clone and AppArmor/SELinux policies)"
            } else {
                ""
            };
            return Err(PreflightError::TrialRun {
                command: shown,
                detail: format!("runtime {}: {status}: {output}{hint}", runtime.name),
            });
        }
        tracing::debug!(?elapsed, "sandbox trial run");
        Ok(())
    })();
    let _ = super::runfs::remove_work_dir(&dir);
    drop(lease);
    result
}

#[cfg(test)]
mod unit {
    use super::*;

    fn etc_with(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("coderun-etc-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        dir
    }

    fn config() -> SandboxConfig {
        SandboxConfig {
            uid_base: 200_000,
            uid_count: 128,
            ..SandboxConfig::default()
        }
    }

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";

    #[test]
    fn a_uid_range_nobody_holds_is_accepted() {
        let etc = etc_with(&[
            ("passwd", PASSWD),
            ("group", "root:x:0:\nalice:x:1000:\n"),
            ("subuid", "alice:100000:65536\nbob:200128:65536\n"),
            ("subgid", "alice:100000:65536\n"),
        ]);
        check_uid_range_in(&config(), &etc).unwrap();
        std::fs::remove_dir_all(etc).unwrap();
    }

    #[test]
    fn a_uid_range_overlapping_subuid_or_subgid_is_refused_with_the_owner() {
        for file in ["subuid", "subgid"] {
            // alice's containers get 165536..231072, which covers 200000..200128.
            let etc = etc_with(&[("passwd", PASSWD), (file, "alice:165536:65536\n")]);
            let message = check_uid_range_in(&config(), &etc).unwrap_err().to_string();
            assert!(message.contains("\"alice\""), "{message}");
            assert!(message.contains(file), "{message}");
            assert!(message.contains("165536..231072"), "{message}");
            assert!(message.contains("uid_base"), "{message}");
            std::fs::remove_dir_all(etc).unwrap();
        }
        // Touching the range by one id at either end is an overlap too.
        for line in ["x:200127:1\n", "x:199000:1001\n"] {
            let etc = etc_with(&[("subuid", line)]);
            assert!(check_uid_range_in(&config(), &etc).is_err(), "{line}");
            std::fs::remove_dir_all(etc).unwrap();
        }
    }

    #[test]
    fn a_uid_range_holding_a_user_or_group_is_refused() {
        let etc = etc_with(&[("passwd", "svc:x:200005:5::/:/bin/false\n")]);
        let message = check_uid_range_in(&config(), &etc).unwrap_err().to_string();
        assert!(message.contains("host user \"svc\""), "{message}");
        std::fs::remove_dir_all(etc).unwrap();
        let etc = etc_with(&[("group", "builders:x:200100:\n")]);
        let message = check_uid_range_in(&config(), &etc).unwrap_err().to_string();
        assert!(message.contains("host group \"builders\""), "{message}");
        std::fs::remove_dir_all(etc).unwrap();
    }
}
