//! The command line that starts one sandbox, as a chain of `exec`s with no `unsafe` and no
//! `pre_exec`:
//!
//! ```text
//! sh -c JOIN <filters> <cgroup.procs…> -- (as the worker: open the system-call filters on
//!                                         fds 3 and 4, join the run's cgroups)
//!   setpriv [--reuid U --regid U …] …    (as root: become the run's uid, no caps, no groups;
//!                                         always: no_new_privs, die with the worker)
//!     prlimit --cpu --nproc --fsize …    (rlimits)
//!       bwrap --unshare-all …            (namespaces, mounts — the language runtime's /usr
//!                                         and /etc as the system —, clean environment, and the
//!                                         filters read from fds 3 and 4, installed last)
//!         /bin/sh -c <command>           (the program)
//! ```
//!
//! The rule it keeps: the program starts only after every layer is in place — the first
//! process is in the run's cgroup before it `exec`s anything, and any failing step exits
//! instead of going on with less confinement. Nothing the program controls is ever
//! interpreted by a host shell: its command is one argv element handed to the sandbox's `sh`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::runtime::Runtime;
use crate::executor::environment::RunEnvironment;

use super::{CODE_PATH, DATA_DIR, INPUT_DIR, Limits, OUTPUT_DIR, SandboxConfig};

/// Exit code of the first process when it cannot join the run's cgroup.
pub(super) const JOIN_FAILED: i32 = 125;

/// Opens the two filter files given first on fds 3 and 4 (bubblewrap reads and closes them),
/// writes its own pid into each `cgroup.procs` given before `--`, then execs the rest.
const JOIN: &str = r#"exec 3<"$1" 4<"$2" || { echo "coderun: cannot open the system-call filters" >&2; exit 125; }
shift 2
for f do
  if [ "$f" = -- ]; then shift; exec "$@"; fi
  echo $$ > "$f" || { echo "coderun: cannot join cgroup $f" >&2; exit 125; }
  shift
done
echo "coderun: no command after --" >&2; exit 125"#;

/// The host programs the chain uses (absolute paths, checked at preflight).
#[derive(Debug, Clone)]
pub(super) struct Tools {
    pub sh: PathBuf,
    pub setpriv: PathBuf,
    pub prlimit: PathBuf,
    pub bwrap: PathBuf,
}

/// Whose uid the program gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Identity {
    /// The worker is root: become this unprivileged host uid first.
    Drop { uid: u32, gid: u32 },
    /// The worker is not root: keep its uid (mapped to itself in bwrap's user namespace).
    Keep { uid: u32, gid: u32 },
}

impl Identity {
    pub fn ids(&self) -> (u32, u32) {
        match *self {
            Identity::Drop { uid, gid } | Identity::Keep { uid, gid } => (uid, gid),
        }
    }
}

/// Everything one launch needs.
pub(super) struct Launch<'a> {
    pub tools: &'a Tools,
    pub runtime: &'a Runtime,
    pub config: &'a SandboxConfig,
    pub identity: Identity,
    pub cgroup_procs: Vec<PathBuf>,
    pub limits: Limits,
    pub run_id: Uuid,
    pub attempt: u32,
    pub code_dir: PathBuf,
    pub output_dir: PathBuf,
    /// The host folders of `/tmp` and `/dev/shm` on the run's tmpfs; `None`: each is a tmpfs
    /// of the disk budget that bubblewrap makes.
    pub scratch: Option<(PathBuf, PathBuf)>,
    pub etc_dir: PathBuf,
    /// The compiled filters (deny list, `clone3`), opened by the first process.
    pub seccomp: [PathBuf; 2],
    pub datasets: &'a [(String, PathBuf)],
    /// The earlier steps' outputs of a pipeline step, mounted read-only at `$INPUT_DIR`.
    pub inputs: Option<&'a Path>,
    /// A pipeline step's `PARAM_<NAME>` variables.
    pub env: &'a [(String, String)],
    pub command: &'a str,
}

impl Launch<'_> {
    /// Program and arguments of the whole chain.
    pub fn argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::with_capacity(128);
        let l = &self.limits;
        let disk_bytes = u64::from(l.disk_mib) * 1024 * 1024;
        // Cpu seconds the program could use at its cpu share over its whole wall time.
        let cpu_seconds = (u64::from(l.wall_seconds) * u64::from(l.cpu_millis)).div_ceil(1000) + 1;

        push(&mut a, &[&self.tools.sh, &"-c", &JOIN, &"coderun-join"]);
        push(&mut a, &[&self.seccomp[0], &self.seccomp[1]]);
        for procs in &self.cgroup_procs {
            push(&mut a, &[procs]);
        }
        push(&mut a, &[&"--"]);

        push(&mut a, &[&self.tools.setpriv]);
        if let Identity::Drop { uid, gid } = self.identity {
            push(
                &mut a,
                &[
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    &"--clear-groups",
                    &"--inh-caps=-all",
                    &"--bounding-set=-all",
                ],
            );
        }
        push(
            &mut a,
            &[
                &"--nnp",
                // If the worker dies, so does the sandbox (bwrap's --die-with-parent carries it
                // on to the program). Linux sends it when the *thread* that spawned us ends:
                // runs are spawned from the runtime's worker threads, which live as long as
                // the worker, never from a blocking-pool thread.
                &"--pdeathsig=KILL",
                &"--",
            ],
        );

        push(
            &mut a,
            &[
                &self.tools.prlimit,
                &format!("--cpu={cpu_seconds}:{}", cpu_seconds + 1),
                &format!("--fsize={disk_bytes}:{disk_bytes}"),
                &format!("--nofile={n}:{n}", n = self.config.open_files),
                &"--core=0:0",
            ],
        );
        if matches!(self.identity, Identity::Drop { .. }) {
            // The uid is the run's own, so the per-uid process count is the run's.
            push(&mut a, &[&format!("--nproc={n}:{n}", n = l.pids)]);
        }
        push(&mut a, &[&"--"]);

        push(
            &mut a,
            &[
                &self.tools.bwrap,
                &"--unshare-all",
                &"--unshare-user",
                &"--disable-userns",
                &"--die-with-parent",
                // The program's shell is PID 1 of its namespace, as in a container: the outer
                // bwrap then reaps it itself, so no zombie of the run's uid is left for the
                // host's init to reap (bwrap's own PID-1 reaper exits unreaped). When PID 1
                // ends, the kernel kills the rest of the namespace.
                &"--as-pid-1",
                &"--new-session",
                &"--hostname",
                &"coderun",
                &"--clearenv",
            ],
        );
        let promised = RunEnvironment::new(self.run_id, self.attempt).vars();
        for (k, v) in promised.iter().map(|(k, v)| (*k, v.as_str())).chain([
            ("HOME", "/tmp"),
            ("PATH", self.config.path_env.as_str()),
            ("LANG", "C.UTF-8"),
        ]) {
            push(&mut a, &[&"--setenv", &k, &v]);
        }
        for (k, v) in self.runtime.env(&self.limits) {
            push(&mut a, &[&"--setenv", &k, &v]);
        }
        for (k, v) in self.env {
            push(&mut a, &[&"--setenv", k, v]);
        }
        if self.inputs.is_some() {
            push(&mut a, &[&"--setenv", &"INPUT_DIR", &INPUT_DIR]);
        }
        // The runtime's /usr and /etc and nothing else of a system: the host's programs and
        // configuration stay out of sight.
        push(&mut a, &[&"--ro-bind", &self.runtime.usr, &"/usr"]);
        for (target, link) in &self.runtime.links {
            push(&mut a, &[&"--symlink", target, link]);
        }
        push(&mut a, &[&"--ro-bind", &self.runtime.etc, &"/etc"]);
        for name in ["passwd", "group", "hosts"] {
            push(
                &mut a,
                &[
                    &"--ro-bind",
                    &self.etc_dir.join(name),
                    &format!("/etc/{name}"),
                ],
            );
        }
        push(&mut a, &[&"--proc", &"/proc", &"--dev", &"/dev"]);
        match &self.scratch {
            Some((tmp, shm)) => {
                push(
                    &mut a,
                    &[&"--bind", tmp, &"/tmp", &"--bind", shm, &"/dev/shm"],
                );
            }
            None => {
                let size = disk_bytes.to_string();
                for place in ["/tmp", "/dev/shm"] {
                    push(
                        &mut a,
                        &[&"--perms", &"1777", &"--size", &size, &"--tmpfs", &place],
                    );
                }
            }
        }
        push(
            &mut a,
            &[
                &"--bind",
                &self.code_dir,
                &CODE_PATH,
                &"--bind",
                &self.output_dir,
                &OUTPUT_DIR,
                &"--dir",
                &DATA_DIR,
            ],
        );
        for (name, host) in self.datasets {
            push(&mut a, &[&"--ro-bind", host, &format!("{DATA_DIR}/{name}")]);
        }
        if let Some(inputs) = self.inputs {
            push(&mut a, &[&"--ro-bind", &inputs.to_path_buf(), &INPUT_DIR]);
        }
        push(
            &mut a,
            &[
                // Installed right before the program is executed, after every mount.
                &"--add-seccomp-fd",
                &"3",
                &"--add-seccomp-fd",
                &"4",
                &"--remount-ro",
                &"/",
                &"--chdir",
                &CODE_PATH,
                &"--",
                &"/bin/sh",
                &"-c",
                &self.command,
            ],
        );
        a
    }

    pub fn command(&self) -> tokio::process::Command {
        let argv = self.argv();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        // The chain sees none of the worker's environment (bwrap --clearenv does it again for
        // the program).
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd
    }
}

fn push(a: &mut Vec<OsString>, items: &[&dyn AsRefOs]) {
    a.extend(items.iter().map(|i| i.os()));
}

/// Anything that becomes one argv element.
trait AsRefOs {
    fn os(&self) -> OsString;
}

impl AsRefOs for &str {
    fn os(&self) -> OsString {
        OsString::from(*self)
    }
}

impl AsRefOs for String {
    fn os(&self) -> OsString {
        OsString::from(self)
    }
}

impl AsRefOs for PathBuf {
    fn os(&self) -> OsString {
        self.as_os_str().to_owned()
    }
}

impl AsRefOs for &String {
    fn os(&self) -> OsString {
        OsString::from(*self)
    }
}
