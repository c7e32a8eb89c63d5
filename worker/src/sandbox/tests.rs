//! The sandbox against real programs: each test runs code through bubblewrap, a real cgroup
//! and a real uid, and proves one containment promise: the program gets nothing it was not given.
//!
//! The rule they keep: they need root, bubblewrap and a writable memory cgroup. Not root:
//! each test prints why and returns. Root but the preflight fails: every test fails with the
//! preflight's message — a host that cannot confine code never passes silently. After every
//! run, `assert_clean` proves nothing of the run is left: no process with its uid (zombies
//! included) and no cgroup folder.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;

static SANDBOX: OnceLock<Result<Sandbox, String>> = OnceLock::new();

/// Set in the environment of the child test process `worker_environment_is_not_visible`
/// starts.
const FAKE_SECRET_VAR: &str = "CODERUN_FAKE_SECRET";
const FAKE_SECRET: &str = "hunter2-do-not-leak-4f1c";

fn test_config() -> SandboxConfig {
    // A uid range and cgroup folder of the tests' own, so they never touch a worker's (the
    // child process of the environment test gets yet another, since preflight clears its
    // range).
    let child = std::env::var_os(FAKE_SECRET_VAR).is_some();
    SandboxConfig {
        uid_base: if child { 310_000 } else { 300_000 },
        uid_count: 16,
        cgroup_name: if child {
            "coderun-test-child".into()
        } else {
            "coderun-test".into()
        },
        languages: TEST_RUNTIMES
            .iter()
            .map(|name| (name.to_string(), name.to_string()))
            .collect(),
        ..SandboxConfig::default()
    }
}

/// The runtimes these tests run programs in (built by `infra/runtimes/build.py` on first use,
/// then reused from its cache).
const TEST_RUNTIMES: [&str; 3] = ["python", "java", "r"];

fn sandbox() -> Option<&'static Sandbox> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: sandbox tests need root (bubblewrap, cgroups, per-run uids)");
        return None;
    }
    let build = || {
        ensure_built(&TEST_RUNTIMES)?;
        Sandbox::new(test_config()).map_err(|e| e.to_string())
    };
    match SANDBOX.get_or_init(build) {
        Ok(sandbox) => Some(sandbox),
        Err(e) => panic!("sandbox preflight failed on this host: {e}"),
    }
}

fn limits() -> Limits {
    Limits {
        cpu_millis: 1000,
        memory_mib: 128,
        disk_mib: 16,
        pids: 32,
        wall_seconds: 10,
    }
}

fn tests_root() -> PathBuf {
    std::env::temp_dir().join("coderun-sandbox-tests")
}

/// A run's work dir with `code/` filled by `files`.
fn work_dir(files: &[(&str, &str)]) -> PathBuf {
    let dir = tests_root().join(Uuid::new_v4().to_string());
    std::fs::create_dir_all(dir.join("code")).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join("code").join(name), content).unwrap();
    }
    dir
}

/// A Python run (the runtime of most tests here).
fn request(dir: &Path, command: &str, limits: Limits) -> SandboxRequest {
    request_in("python", dir, command, limits)
}

fn request_in(language: &str, dir: &Path, command: &str, limits: Limits) -> SandboxRequest {
    SandboxRequest {
        run_id: Uuid::new_v4(),
        attempt: 1,
        language: language.into(),
        command: command.into(),
        work_dir: dir.to_path_buf(),
        datasets: Vec::new(),
        inputs: None,
        env: Vec::new(),
        limits,
        log_max_bytes: 1024 * 1024,
    }
}

struct Done {
    outcome: SandboxOutcome,
    lines: Vec<String>,
    dir: PathBuf,
}

impl Done {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }
    fn log_file(&self) -> String {
        std::fs::read_to_string(self.dir.join(LOG_FILE)).unwrap()
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let _ = remove_work_dir(&self.dir);
    }
}

/// Where the program's `$OUTPUT_DIR` is on the host.
fn output_of(dir: &Path) -> PathBuf {
    dir.join(RUN_FS).join("output")
}

/// Runs `req` to its end, collecting its lines, and proves nothing of it is left.
async fn run(sandbox: &Sandbox, req: SandboxRequest) -> Done {
    let (tx, mut rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    let (run_id, dir) = (req.run_id, req.work_dir.clone());
    let outcome = sandbox
        .run(req, tx, CancellationToken::new())
        .await
        .expect("run");
    let lines = collector.await.unwrap();
    assert_clean(sandbox, outcome.uid, run_id);
    Done {
        outcome,
        lines,
        dir,
    }
}

/// No process of the run's uid (zombies included) and no cgroup folder of the run.
fn assert_clean(sandbox: &Sandbox, uid: u32, run_id: Uuid) {
    assert_ne!(uid, 0);
    let left: Vec<String> = procs::pids_with_uid(uid)
        .into_iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let pick = |k: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(k))
                    .unwrap_or("")
                    .to_string()
            };
            format!(
                "{pid} {} {} {}",
                pick("Name:"),
                pick("State:"),
                pick("PPid:")
            )
        })
        .collect();
    assert!(
        left.is_empty(),
        "processes of uid {uid} left after the run: {left:?}"
    );
    for dir in sandbox.cgroups.run_dirs(&run_id.to_string()) {
        assert!(!dir.exists(), "cgroup {} left after the run", dir.display());
    }
}

#[tokio::test]
async fn hello_world_exits_0_with_its_lines() {
    let Some(sb) = sandbox() else { return };
    let dir = work_dir(&[("main.sh", "echo hello\necho world\n")]);
    let done = run(sb, request(&dir, "sh main.sh", limits())).await;
    assert_eq!(done.outcome.termination, Termination::Exited(0));
    assert_eq!(done.lines, ["hello", "world"]);
    assert_eq!(done.log_file(), "hello\nworld\n");
    assert_eq!(done.outcome.log_bytes, 12);
    assert!(!done.outcome.log_truncated);
}

/// A root worker makes moving a run's first process into its cgroups cheap (`favordynmods`)
/// where the kernel has the option (Linux 6.1 and later), once per host; runs are confined as
/// before (every other test here runs with it on).
#[tokio::test]
async fn cgroup_moves_are_favoured_where_the_kernel_has_the_option() {
    let Some(_sandbox) = sandbox() else { return };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let favoured = cgroup::cgroup_mounts()
        .unwrap()
        .iter()
        .any(|m| m.options.iter().any(|o| o == "favordynmods"));
    if version >= (6, 1) {
        assert!(
            favoured,
            "Linux {release}: no cgroup hierarchy has favordynmods"
        );
    }
    if favoured {
        // Building another sandbox mounts nothing more.
        assert_eq!(cgroup::favor_moves(), cgroup::FavorMoves::Already);
    }
}

#[tokio::test]
async fn exit_code_is_reported() {
    let Some(sb) = sandbox() else { return };
    let done = run(sb, request(&work_dir(&[]), "exit 3", limits())).await;
    assert_eq!(done.outcome.termination, Termination::Exited(3));
}

#[tokio::test]
async fn stderr_is_interleaved_into_the_same_log() {
    let Some(sb) = sandbox() else { return };
    let cmd = "echo one; echo two >&2; echo three; echo four >&2; printf 'no newline' >&2";
    let done = run(sb, request(&work_dir(&[]), cmd, limits())).await;
    assert_eq!(done.lines, ["one", "two", "three", "four", "no newline"]);
    assert_eq!(done.log_file(), "one\ntwo\nthree\nfour\nno newline\n");
}

#[tokio::test]
async fn the_run_environment_is_exactly_the_documented_one() {
    let Some(sb) = sandbox() else { return };
    let req = request(&work_dir(&[]), "pwd; env | sort", limits());
    let run_id = req.run_id;
    let done = run(sb, req).await;
    assert_eq!(done.outcome.termination, Termination::Exited(0));
    assert_eq!(done.lines[0], "/code");
    let env: Vec<&str> = done.lines[1..].iter().map(String::as_str).collect();
    let expected = [
        "CODE_PATH=/code".to_string(),
        "DATA_DIR=/data".into(),
        "HOME=/tmp".into(),
        "LANG=C.UTF-8".into(),
        // The Python runtime's own (infra/runtimes/python.toml), sized to the run's one cpu.
        "MPLBACKEND=Agg".into(),
        "OMP_NUM_THREADS=1".into(),
        "OPENBLAS_NUM_THREADS=1".into(),
        "OUTPUT_DIR=/output".into(),
        "PATH=/usr/local/bin:/usr/bin:/bin".into(),
        "PWD=/code".into(),
        "PYTHONDONTWRITEBYTECODE=1".into(),
        "RUN_ATTEMPT=1".into(),
        format!("RUN_ID={run_id}"),
    ];
    assert_eq!(env, expected);
}

/// Starts this test binary again with a fake secret in its environment, running `env_probe`
/// there: the probe's sandbox must not see it.
#[tokio::test]
async fn worker_environment_is_not_visible() {
    let Some(_) = sandbox() else { return };
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::tests::env_probe",
            "--ignored",
            "--nocapture",
        ])
        .env(FAKE_SECRET_VAR, FAKE_SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "env_probe failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("env_probe: secret not visible"),
        "{stdout}\n{stderr}"
    );
}

#[tokio::test]
#[ignore = "run by worker_environment_is_not_visible with a fake secret in the environment"]
async fn env_probe() {
    assert_eq!(
        std::env::var(FAKE_SECRET_VAR).as_deref(),
        Ok(FAKE_SECRET),
        "start me via the test"
    );
    let Some(sb) = sandbox() else { return };
    // Our own environment, PID 1's (bwrap) and every readable one.
    let cmd = "env; tr '\\0' '\\n' < /proc/1/environ; cat /proc/*/environ | tr '\\0' '\\n'";
    let done = run(sb, request(&work_dir(&[]), cmd, limits())).await;
    assert_eq!(done.outcome.termination, Termination::Exited(0));
    assert!(done.has("CODE_PATH=/code"), "{:?}", done.lines);
    let leaked: Vec<_> = done
        .lines
        .iter()
        .filter(|l| l.contains(FAKE_SECRET))
        .collect();
    assert!(
        leaked.is_empty(),
        "the sandbox sees the worker's secret: {leaked:?}"
    );
    // Nor anything else of the worker's environment (cargo sets plenty of variables).
    // (The sandbox sets PATH, HOME, LANG, the shell PWD and its runtime's variables to values
    // of its own.)
    let runtime_vars = sb.runtime("python").unwrap().env(&limits());
    let own = |key: &str| {
        ["PATH", "HOME", "LANG", "PWD"].contains(&key) || runtime_vars.iter().any(|(k, _)| k == key)
    };
    for (key, _) in std::env::vars() {
        if !own(&key) {
            let prefix = format!("{key}=");
            assert!(
                !done.lines.iter().any(|l| l.starts_with(&prefix)),
                "{key} leaked"
            );
        }
    }
    println!("env_probe: secret not visible");
}

#[tokio::test]
async fn no_network_only_loopback() {
    let Some(sb) = sandbox() else { return };
    let script = r#"
import socket
for target in [("1.1.1.1", 53), ("8.8.8.8", 443)]:
    try:
        socket.create_connection(target, timeout=2)
        print("CONNECTED", target)
    except OSError as e:
        print("NO-NET", e.errno)
try:
    socket.getaddrinfo("example.com", 80)
    print("RESOLVED")
except OSError:
    print("NO-DNS")
"#;
    let dir = work_dir(&[("net.py", script)]);
    let cmd = "python3 net.py; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";
    let done = run(sb, request(&dir, cmd, limits())).await;
    assert_eq!(
        done.outcome.termination,
        Termination::Exited(0),
        "{:?}",
        done.lines
    );
    assert!(
        !done
            .lines
            .iter()
            .any(|l| l.starts_with("CONNECTED") || l == "RESOLVED"),
        "{:?}",
        done.lines
    );
    assert_eq!(
        done.lines
            .iter()
            .filter(|l| l.starts_with("NO-NET"))
            .count(),
        2,
        "{:?}",
        done.lines
    );
    assert!(done.has("NO-DNS"));
    // The only interface is the loopback.
    assert_eq!(
        done.lines.last().map(String::as_str),
        Some("lo"),
        "{:?}",
        done.lines
    );
    assert!(!done.lines.iter().any(|l| l == "eth0"));
}

#[tokio::test]
async fn host_secrets_and_other_runs_are_not_visible() {
    let Some(sb) = sandbox() else { return };
    // Another run's folder on the same host, readable by everyone on the host.
    let other = work_dir(&[("secret.txt", "TOPSECRET-OTHER-RUN\n")]);
    let other_file = other.join("code/secret.txt");
    let mut cmd = String::new();
    for path in [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/ssh",
        "/root",
        "/home",
        "/work",
        "/var",
        "/srv",
        "/opt",
        "/sys",
        "/run",
        "/etc/ssl/private",
        other_file.to_str().unwrap(),
        tests_root().to_str().unwrap(),
    ] {
        cmd.push_str(&format!("test -e '{path}' && echo 'VISIBLE {path}'; "));
    }
    cmd.push_str(&format!("cat '{}' 2>&1; ", other_file.display()));
    cmd.push_str(
        "grep -rs TOPSECRET-OTHER-RUN / --exclude-dir=proc --exclude-dir=usr --exclude-dir=dev; ",
    );
    cmd.push_str("ls /; echo --; ls /etc");
    let done = run(sb, request(&work_dir(&[]), &cmd, limits())).await;
    let _ = std::fs::remove_dir_all(&other);
    let visible: Vec<_> = done
        .lines
        .iter()
        .filter(|l| l.starts_with("VISIBLE"))
        .collect();
    assert!(visible.is_empty(), "{visible:?}");
    assert!(
        !done.lines.iter().any(|l| l.contains("TOPSECRET-OTHER-RUN")),
        "{:?}",
        done.lines
    );
    // The root holds exactly the sandbox's own folders.
    let root: Vec<&str> = done
        .lines
        .iter()
        .map(String::as_str)
        .skip_while(|l| *l != "bin")
        .take_while(|l| *l != "--")
        .collect();
    assert_eq!(
        root,
        [
            "bin", "code", "data", "dev", "etc", "lib", "lib64", "output", "proc", "sbin", "tmp",
            "usr"
        ]
    );
    assert!(!done.has("shadow"), "{:?}", done.lines);
}

#[tokio::test]
async fn runs_as_its_own_non_root_uid_and_cannot_write_the_system() {
    let Some(sb) = sandbox() else { return };
    let cmd = "id -u; id -g; id -G; \
        for p in /usr/x /x /etc/x /bin/x /data/x /proc/sys/kernel/x; do touch $p 2>/dev/null && echo WROTE $p; done; \
        touch /code/x && echo CODE-OK; touch /output/x && echo OUT-OK; touch /tmp/x && echo TMP-OK; \
        grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status; \
        unshare -U true 2>/dev/null && echo NESTED-USERNS";
    let done = run(sb, request(&work_dir(&[]), cmd, limits())).await;
    let uid = done.outcome.uid;
    assert!(uid >= 300_000, "uid {uid}");
    assert_eq!(done.lines[0], uid.to_string());
    assert_eq!(done.lines[1], uid.to_string());
    assert_eq!(
        done.lines[2],
        uid.to_string(),
        "supplementary groups must be cleared"
    );
    assert!(
        !done
            .lines
            .iter()
            .any(|l| l.starts_with("WROTE") || l == "NESTED-USERNS"),
        "{:?}",
        done.lines
    );
    assert!(
        done.has("CODE-OK") && done.has("OUT-OK") && done.has("TMP-OK"),
        "{:?}",
        done.lines
    );
    assert!(done.has("CapEff:\t0000000000000000"), "{:?}", done.lines);
    assert!(done.has("NoNewPrivs:\t1"), "{:?}", done.lines);
}

#[tokio::test]
async fn concurrent_runs_get_distinct_uids() {
    let Some(sb) = sandbox() else { return };
    let (a, b) = tokio::join!(
        run(sb, request(&work_dir(&[]), "id -u; sleep 0.5", limits())),
        run(sb, request(&work_dir(&[]), "id -u; sleep 0.5", limits())),
    );
    assert_ne!(a.outcome.uid, b.outcome.uid);
    assert_eq!(a.lines[0], a.outcome.uid.to_string());
    assert_eq!(b.lines[0], b.outcome.uid.to_string());
}

#[tokio::test]
async fn datasets_are_mounted_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let Some(sb) = sandbox() else { return };
    let ds = tests_root().join(format!("dataset-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&ds).unwrap();
    std::fs::write(ds.join("rows.csv"), "a,b\n1,2\n").unwrap();
    // Writable by everyone on the host: only the read-only mount stops the program.
    std::fs::set_permissions(&ds, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(ds.join("rows.csv"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut req = request(
        &work_dir(&[]),
        "cat $DATA_DIR/iris/rows.csv; touch $DATA_DIR/iris/new 2>/dev/null && echo DS-WRITABLE; \
         { echo x >> $DATA_DIR/iris/rows.csv; } 2>/dev/null && echo DS-APPENDED; \
         touch /tmp/probe; mv /tmp/probe $DATA_DIR/iris/ 2>&1 | grep -o 'Read-only file system'; ls $DATA_DIR",
        limits(),
    );
    req.datasets = vec![("iris".into(), ds.clone())];
    let done = run(sb, req).await;
    assert_eq!(done.lines, ["a,b", "1,2", "Read-only file system", "iris"]);
    assert_eq!(
        std::fs::read_to_string(ds.join("rows.csv")).unwrap(),
        "a,b\n1,2\n"
    );
    let _ = std::fs::remove_dir_all(&ds);
}

#[tokio::test]
async fn outputs_never_follow_symlinks_or_hard_links() {
    let Some(sb) = sandbox() else { return };
    let other = work_dir(&[("secret.txt", "TOPSECRET-OTHER-RUN\n")]);
    let other_file = other.join("code/secret.txt");
    let cmd = format!(
        "cd $OUTPUT_DIR; echo ok > real.txt; mkdir sub; echo nested > sub/n.txt; \
         ln -s /etc/passwd passwd; ln -s '{}' other; ln -s / rootlink; ln -s sub sublink; \
         ln -s ../../.. up; echo x > a; ln a b; mkfifo fifo; ls -la",
        other_file.display()
    );
    let done = run(sb, request(&work_dir(&[]), &cmd, limits())).await;
    assert_eq!(
        done.outcome.termination,
        Termination::Exited(0),
        "{:?}",
        done.lines
    );
    // What a compromised host-side writer could also have planted: a hard link to a file of
    // another run (same file system) appears after the run.
    // With the run's folders on a tmpfs of its own, a file of another run is on another file
    // system, so the link comes from a file of the worker's on the same tmpfs.
    let foreign = done.dir.join(RUN_FS).join("tmp/foreign");
    std::fs::write(&foreign, "TOPSECRET-WORKER\n").unwrap();
    std::fs::hard_link(&foreign, output_of(&done.dir).join("planted")).unwrap();

    let collected = sb
        .collect_outputs(&done.dir, 100, 1 << 20, &task_paths())
        .unwrap();
    let files: Vec<&str> = collected.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(files, ["real.txt", "sub/n.txt"]);
    let skipped: Vec<(&str, SkipReason)> = collected
        .skipped
        .iter()
        .map(|s| (s.path.as_str(), s.reason))
        .collect();
    assert_eq!(
        skipped,
        [
            ("a", SkipReason::HardLink),
            ("b", SkipReason::HardLink),
            ("fifo", SkipReason::NotRegular),
            ("other", SkipReason::Symlink),
            ("passwd", SkipReason::Symlink),
            ("planted", SkipReason::HardLink),
            ("rootlink", SkipReason::Symlink),
            ("sublink", SkipReason::Symlink),
            ("up", SkipReason::Symlink),
        ]
    );
    let mut content = String::new();
    std::io::Read::read_to_string(&mut collected.files[0].open().unwrap(), &mut content).unwrap();
    assert_eq!(content, "ok\n");
    // After the run the folder is the worker's again.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::symlink_metadata(output_of(&done.dir).join("real.txt"))
            .unwrap()
            .uid(),
        0
    );

    // Caps: one file, or too few bytes.
    let one = sb
        .collect_outputs(&done.dir, 1, 1 << 20, &task_paths())
        .unwrap();
    assert_eq!(one.files.len(), 1);
    assert!(one.truncated);
    let small = sb
        .collect_outputs(&done.dir, 100, 3, &task_paths())
        .unwrap();
    assert_eq!(
        small
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["real.txt"]
    );
    assert!(small.truncated);
    let _ = std::fs::remove_dir_all(&other);
}

#[tokio::test]
async fn fork_bomb_ends_within_the_wall_time() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        pids: 32,
        wall_seconds: 5,
        ..limits()
    };
    let done = run(sb, request(&work_dir(&[]), "f() { f | f & f; }; f", lim)).await;
    let t = done.outcome.termination;
    assert!(
        t == Termination::DeadlineExceeded || matches!(t, Termination::Exited(c) if c != 0),
        "{t:?}"
    );
    assert!(
        done.outcome.duration < Duration::from_secs(7),
        "{:?}",
        done.outcome
    );
}

#[tokio::test]
async fn processes_are_limited_to_pids() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        pids: 24,
        ..limits()
    };
    let cmd = "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); echo started $i; done";
    let done = run(sb, request(&work_dir(&[]), cmd, lim)).await;
    let started = done
        .lines
        .iter()
        .filter(|l| l.starts_with("started"))
        .count();
    // bwrap (outside and as PID 1) and the shell count too.
    assert!(
        started > 5 && started < 24,
        "started {started}: {:?}",
        done.lines
    );
    assert!(
        done.lines.iter().any(|l| l.contains("Cannot fork")),
        "{:?}",
        done.lines
    );
    assert_ne!(done.outcome.termination, Termination::Exited(0));
    assert!(
        done.outcome.duration < Duration::from_secs(5),
        "the sleeps died with the run"
    );
}

#[tokio::test]
async fn memory_bomb_is_oom_killed() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        memory_mib: 64,
        ..limits()
    };
    let done = run(
        sb,
        request(&work_dir(&[]), "head -c 1G /dev/zero | tail", lim),
    )
    .await;
    assert_eq!(
        done.outcome.termination,
        Termination::OomKilled,
        "{:?}",
        done.lines
    );
}

#[tokio::test]
async fn python_memory_bomb_is_oom_killed() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        memory_mib: 64,
        ..limits()
    };
    let cmd = "python3 -c \"x = 'a' * (512 * 1024 * 1024); print(len(x))\"";
    let done = run(sb, request(&work_dir(&[]), cmd, lim)).await;
    assert_eq!(
        done.outcome.termination,
        Termination::OomKilled,
        "{:?}",
        done.lines
    );
}

#[tokio::test]
async fn one_big_file_is_cut_at_the_disk_limit() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        disk_mib: 8,
        ..limits()
    };
    let cmd = "dd if=/dev/zero of=$OUTPUT_DIR/big bs=1M count=64";
    let done = run(sb, request(&work_dir(&[]), cmd, lim)).await;
    let t = done.outcome.termination;
    assert!(
        t == Termination::DiskLimitExceeded || matches!(t, Termination::Exited(c) if c != 0),
        "{t:?}"
    );
    let size = std::fs::metadata(output_of(&done.dir).join("big"))
        .unwrap()
        .len();
    assert!(size <= 8 * 1024 * 1024, "{size}");
}

#[tokio::test]
async fn tmp_and_outputs_share_one_disk_budget() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        disk_mib: 8,
        ..limits()
    };
    let cmd = "head -c 6291456 /dev/zero > /tmp/a; echo tmp=$?; \
               head -c 6291456 /dev/zero > $OUTPUT_DIR/b 2>/dev/null; echo out=$?; \
               head -c 6291456 /dev/zero > /dev/shm/c 2>/dev/null; echo shm=$?; sleep 20";
    let done = run(sb, request(&work_dir(&[]), cmd, lim)).await;
    assert_eq!(
        done.outcome.termination,
        Termination::DiskLimitExceeded,
        "{:?}",
        done.lines
    );
    // The first write fits; whatever came after found the budget used up (the run may be
    // killed before it says so).
    assert_eq!(done.lines[0], "tmp=0", "{:?}", done.lines);
    if let Some(second) = done.lines.get(1) {
        assert_eq!(second, "out=1", "{:?}", done.lines);
    }
    let size = |p: &str| std::fs::metadata(done.dir.join(RUN_FS).join(p)).map_or(0, |m| m.len());
    let (a, b, c) = (size("tmp/a"), size("output/b"), size("shm/c"));
    assert_eq!(a, 6 * 1024 * 1024);
    assert!(a + b + c <= 8 * 1024 * 1024, "{a} + {b} + {c}");
    assert!(
        done.outcome.duration < Duration::from_secs(8),
        "{:?}",
        done.outcome
    );
}

#[tokio::test]
async fn many_files_trip_the_disk_budget() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        disk_mib: 8,
        wall_seconds: 20,
        ..limits()
    };
    let cmd = "i=0; while :; do dd if=/dev/zero of=$OUTPUT_DIR/f$i bs=1M count=1 2>/dev/null; \
               i=$((i+1)); sleep 0.02; done";
    let done = run(sb, request(&work_dir(&[]), cmd, lim)).await;
    assert_eq!(done.outcome.termination, Termination::DiskLimitExceeded);
    assert!(
        done.outcome.duration < Duration::from_secs(5),
        "{:?}",
        done.outcome
    );
    let usage = disk::measure(&[output_of(&done.dir)], u64::MAX, u64::MAX);
    assert!(usage.bytes < 24 * 1024 * 1024, "{usage:?}");
}

#[tokio::test]
async fn infinite_loop_hits_the_deadline() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        wall_seconds: 2,
        ..limits()
    };
    let done = run(sb, request(&work_dir(&[]), "while :; do :; done", lim)).await;
    assert_eq!(done.outcome.termination, Termination::DeadlineExceeded);
    let d = done.outcome.duration;
    assert!(
        d >= Duration::from_secs(2) && d < Duration::from_millis(3500),
        "{d:?}"
    );
}

#[tokio::test]
async fn sigterm_ignoring_program_still_hits_the_deadline() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        wall_seconds: 2,
        ..limits()
    };
    let cmd = "trap '' TERM; sleep 100 & sleep 100 & sleep 100";
    let done = run(sb, request(&work_dir(&[]), cmd, lim)).await;
    assert_eq!(done.outcome.termination, Termination::DeadlineExceeded);
    assert!(done.outcome.duration < Duration::from_millis(3500));
}

#[tokio::test]
async fn stop_kills_a_sigterm_ignoring_program_promptly() {
    let Some(sb) = sandbox() else { return };
    let req = request(
        &work_dir(&[]),
        "trap '' TERM; sleep 100 & echo ready; sleep 100",
        limits(),
    );
    let (run_id, dir) = (req.run_id, req.work_dir.clone());
    let (tx, mut rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { sb.run(req, tx, stop).await }
    });
    assert_eq!(rx.recv().await.as_deref(), Some("ready"));
    let stopped_at = Instant::now();
    stop.cancel();
    let outcome = running.await.unwrap().unwrap();
    assert!(
        stopped_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        stopped_at.elapsed()
    );
    assert_eq!(outcome.termination, Termination::Killed);
    assert_clean(sb, outcome.uid, run_id);
    let _ = remove_work_dir(&dir);
}

#[tokio::test]
async fn dropping_the_run_kills_everything() {
    let Some(sb) = sandbox() else { return };
    let req = request(&work_dir(&[]), "sleep 100 & id -u; sleep 100", limits());
    let (run_id, dir) = (req.run_id, req.work_dir.clone());
    let (tx, mut rx) = mpsc::channel(16);
    let uid_line = {
        let running = sb.run(req, tx, CancellationToken::new());
        tokio::pin!(running);
        tokio::select! {
            line = rx.recv() => line.unwrap(),
            _ = &mut running => panic!("the run ended by itself"),
        }
        // `running` is dropped here, mid-run.
    };
    let uid: u32 = uid_line.parse().unwrap();
    // The clean-up runs on the blocking pool, never on this (the runtime's only) thread.
    let cleaned_on = wait_for_cleanup(run_id).await;
    assert_ne!(cleaned_on, std::thread::current().id());
    assert_clean(sb, uid, run_id);
    let _ = remove_work_dir(&dir);
}

/// Which thread cleaned up after each run whose guard was dropped with work left.
static CLEANUP_THREADS: std::sync::Mutex<Vec<(Uuid, std::thread::ThreadId)>> =
    std::sync::Mutex::new(Vec::new());

pub(super) fn record_cleanup_thread(run_id: Uuid) {
    CLEANUP_THREADS
        .lock()
        .unwrap()
        .push((run_id, std::thread::current().id()));
}

/// Waits (at most 20 s) until the clean-up of `run_id` has finished; returns its thread.
async fn wait_for_cleanup(run_id: Uuid) -> std::thread::ThreadId {
    let start = Instant::now();
    loop {
        // Recorded when the clean-up starts; it is done once the uid has no process and the
        // cgroup is gone, which `assert_clean` checks after.
        let found = CLEANUP_THREADS
            .lock()
            .unwrap()
            .iter()
            .find(|(id, _)| *id == run_id)
            .map(|(_, thread)| *thread);
        if let Some(thread) = found {
            let gone = sb_cgroup_gone(run_id);
            if gone {
                return thread;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the run's clean-up did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sb_cgroup_gone(run_id: Uuid) -> bool {
    let Some(Ok(sb)) = SANDBOX.get() else {
        return true;
    };
    sb.cgroups
        .run_dirs(&run_id.to_string())
        .iter()
        .all(|d| !d.exists())
}

#[tokio::test]
async fn log_flood_is_cut_at_the_cap() {
    let Some(sb) = sandbox() else { return };
    let mut req = request(&work_dir(&[]), "yes", limits());
    req.log_max_bytes = 64 * 1024;
    let done = run(sb, req).await;
    assert_eq!(done.outcome.termination, Termination::OutputLimitExceeded);
    assert!(done.outcome.log_truncated);
    assert_eq!(done.outcome.log_bytes, 64 * 1024);
    let marker = log::cut_marker(64 * 1024);
    assert_eq!(done.lines.last(), Some(&marker));
    assert_eq!(done.lines.len(), 32 * 1024 + 1);
    let file = done.log_file();
    assert_eq!(file.len(), 64 * 1024 + marker.len() + 1);
    assert!(file.ends_with(&format!("y\n{marker}\n")));
}

#[tokio::test]
async fn long_lines_are_split() {
    let Some(sb) = sandbox() else { return };
    let cmd = "head -c 200000 /dev/zero | tr '\\0' a; echo; echo end";
    let done = run(sb, request(&work_dir(&[]), cmd, limits())).await;
    let lens: Vec<usize> = done.lines.iter().map(String::len).collect();
    assert_eq!(lens, [65536, 65536, 65536, 200000 - 3 * 65536, 3]);
}

#[tokio::test]
async fn cpu_is_limited_to_its_share() {
    let Some(sb) = sandbox() else { return };
    if !sb.cgroup_description().contains("cpu /") && !sb.cgroup_description().contains(", cpu") {
        eprintln!("SKIPPED: no cpu cgroup controller on this host");
        return;
    }
    let script = "import time\nt = time.time(); c = time.process_time()\n\
                  while time.time() - t < 2: pass\nprint(round(time.process_time() - c, 2))\n";
    let dir = work_dir(&[("spin.py", script)]);
    let lim = Limits {
        cpu_millis: 250,
        ..limits()
    };
    let done = run(sb, request(&dir, "python3 spin.py", lim)).await;
    let cpu: f64 = done.lines[0].parse().unwrap();
    // A quarter of a core for two seconds: about half a second of cpu.
    assert!(cpu < 0.9, "used {cpu} s of cpu in 2 s at 0.25 cpu");
}

#[tokio::test]
async fn spawning_overhead_is_small() {
    let Some(sb) = sandbox() else { return };
    const N: usize = 20;
    let mut bare = Vec::new();
    for _ in 0..N {
        let t = Instant::now();
        let status = tokio::process::Command::new("/bin/sh")
            .args(["-c", "true"])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        bare.push(t.elapsed());
    }
    let mut boxed = Vec::new();
    let dir = work_dir(&[]);
    for _ in 0..N {
        let t = Instant::now();
        let (tx, _rx) = mpsc::channel(4);
        let out = sb
            .run(
                request(&dir, "true", limits()),
                tx,
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(out.termination, Termination::Exited(0));
        boxed.push(t.elapsed());
    }
    let _ = remove_work_dir(&dir);
    bare.sort();
    boxed.sort();
    let (bare_med, boxed_med) = (bare[N / 2], boxed[N / 2]);
    println!(
        "spawn overhead: bare `sh -c true` median {bare_med:?} (min {:?}); sandboxed median \
         {boxed_med:?} (min {:?}); overhead median {:?}",
        bare[0],
        boxed[0],
        boxed_med.saturating_sub(bare_med)
    );
    assert!(boxed_med < Duration::from_millis(500), "{boxed_med:?}");
}

#[test]
fn missing_bubblewrap_is_a_clear_preflight_error() {
    let config = SandboxConfig {
        bwrap: Some("/nonexistent/bwrap".into()),
        ..test_config()
    };
    let message = Sandbox::new(config).unwrap_err().to_string();
    assert!(message.contains("/nonexistent/bwrap"), "{message}");
    assert!(message.contains("apt-get install bubblewrap"), "{message}");
}

/// Bytes the run's folder uses on the host's own disk: a walk that never enters another file
/// system (the run's tmpfs) and never follows a link.
fn host_disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::symlink_metadata(dir).unwrap().dev();
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.dev() != dev {
                continue;
            }
            bytes += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    bytes
}

/// Runs `cmd` with an 8 MiB disk budget and proves the kernel held it: the run ends
/// `DiskLimitExceeded` well before its wall time, its files were on its own tmpfs, and the
/// host's disk got nothing but the log.
async fn assert_disk_bypass_is_contained(files: &[(&str, &str)], cmd: &str) -> Done {
    let sb = sandbox().expect("checked by the caller");
    let lim = Limits {
        disk_mib: 8,
        wall_seconds: 20,
        ..limits()
    };
    let dir = work_dir(files);
    let req = request(&dir, cmd, lim);
    let (tx, mut rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    let run_id = req.run_id;
    let running = sb.run(req, tx, CancellationToken::new());
    tokio::pin!(running);
    // While it runs: the run's folders are a tmpfs of exactly the budget.
    let mut peak = 0u64;
    let outcome = loop {
        tokio::select! {
            outcome = &mut running => break outcome.expect("run"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                let fs = dir.join(RUN_FS);
                if runfs::is_mount_point(&fs)
                    && let Ok(usage) = runfs::usage(&fs)
                {
                    peak = peak.max(usage.bytes);
                }
            }
        }
    };
    let lines = collector.await.unwrap();
    assert_clean(sb, outcome.uid, run_id);
    assert!(runfs::is_mount_point(&dir.join(RUN_FS)), "no tmpfs");
    assert!(
        peak <= 8 * 1024 * 1024,
        "the run's files reached {peak} bytes"
    );
    assert_eq!(
        outcome.termination,
        Termination::DiskLimitExceeded,
        "{lines:?}"
    );
    assert!(
        outcome.duration < Duration::from_secs(10),
        "{:?}: the budget was noticed late",
        outcome.duration
    );
    // The host's disk: the log and the generated files, nothing the program wrote.
    let on_host = host_disk_bytes(&dir);
    assert!(
        on_host < 256 * 1024,
        "{on_host} bytes of the run on host disk"
    );
    Done {
        outcome,
        lines,
        dir,
    }
}

#[tokio::test]
async fn a_file_held_open_and_deleted_still_counts_against_the_disk_budget() {
    let Some(_) = sandbox() else { return };
    // The file vanishes from every folder at once, but keeps growing through fd 3.
    let cmd = "exec 3>$OUTPUT_DIR/hidden; rm $OUTPUT_DIR/hidden; ls $OUTPUT_DIR | wc -l; \
               while :; do head -c 1048576 /dev/zero >&3 2>/dev/null || echo refused; \
               sleep 0.05; done";
    let done = assert_disk_bypass_is_contained(&[], cmd).await;
    assert_eq!(done.lines[0], "0", "{:?}", done.lines);
}

#[tokio::test]
async fn a_folder_deeper_than_path_max_still_counts_against_the_disk_budget() {
    let Some(_) = sandbox() else { return };
    let script = r#"
import os, time
os.chdir(os.environ["OUTPUT_DIR"])
for _ in range(2100):
    os.mkdir("dd")
    os.chdir("dd")
print("depth", len(os.getcwd()) > 4096, flush=True)
try:
    with open("big", "wb") as f:
        while True:
            f.write(b"x" * (1 << 20))
            f.flush()
except OSError as e:
    print("refused", e.errno, flush=True)
time.sleep(30)
"#;
    let done = assert_disk_bypass_is_contained(&[("deep.py", script)], "python3 deep.py").await;
    assert_eq!(done.lines[0], "depth True", "{:?}", done.lines);
    // Collecting the outputs copes with the tree: what is too deep is left out.
    let sb = sandbox().unwrap();
    let collected = sb
        .collect_outputs(&done.dir, 100, 1 << 30, &task_paths())
        .unwrap();
    assert!(collected.files.is_empty(), "{collected:?}");
}

#[tokio::test]
async fn a_folder_the_worker_cannot_list_still_counts_against_the_disk_budget() {
    let Some(_) = sandbox() else { return };
    let cmd = "mkdir $OUTPUT_DIR/closed; exec 3>$OUTPUT_DIR/closed/big; \
               chmod 000 $OUTPUT_DIR/closed; ls $OUTPUT_DIR/closed 2>/dev/null || echo unlistable; \
               while :; do head -c 1048576 /dev/zero >&3 2>/dev/null || echo refused; \
               sleep 0.05; done";
    let done = assert_disk_bypass_is_contained(&[], cmd).await;
    assert_eq!(done.lines[0], "unlistable", "{:?}", done.lines);
}

#[tokio::test]
async fn code_larger_than_the_disk_budget_is_refused_before_it_runs() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        disk_mib: 1,
        ..limits()
    };
    let big = "x".repeat(2 * 1024 * 1024);
    let dir = work_dir(&[("big.txt", big.as_str())]);
    let (tx, _rx) = mpsc::channel(4);
    let err = sb
        .run(request(&dir, "echo ran", lim), tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::CodeTooLarge(1)), "{err}");
    let _ = remove_work_dir(&dir);
}

#[tokio::test]
async fn the_runs_files_count_against_its_memory() {
    let Some(sb) = sandbox() else { return };
    // The run's cgroup holds memory + disk = 128 MiB: 80 MiB of memory fit, but not next to
    // 60 MiB of files, because tmpfs pages are charged to the run's memory cgroup — the host's
    // memory never pays for a run's files beyond its spec.
    let lim = Limits {
        memory_mib: 64,
        disk_mib: 64,
        ..limits()
    };
    let alloc = "python3 -c \"x = bytearray(80 * 1024 * 1024); print('allocated', flush=True)\"";
    let alone = run(sb, request(&work_dir(&[]), alloc, lim)).await;
    assert_eq!(
        alone.outcome.termination,
        Termination::Exited(0),
        "{:?}",
        alone.lines
    );
    assert_eq!(alone.lines, ["allocated"]);
    let with_files =
        format!("head -c 62914560 /dev/zero > $OUTPUT_DIR/big && echo written; {alloc}");
    let done = run(sb, request(&work_dir(&[]), &with_files, lim)).await;
    assert_eq!(done.lines[0], "written", "{:?}", done.lines);
    assert_eq!(
        done.outcome.termination,
        Termination::OomKilled,
        "{:?}",
        done.lines
    );
}

#[tokio::test]
async fn forbidden_system_calls_fail_with_eperm() {
    let Some(sb) = sandbox() else { return };
    let mut calls: Vec<(String, i64, [u64; 2])> = seccomp::denied()
        .into_iter()
        .map(|(name, nr)| (name.trim_start_matches("SYS_").to_owned(), nr, [0, 0]))
        .collect();
    // Calls refused for some arguments only.
    let clone = nix::libc::SYS_clone;
    let sigchld = nix::libc::SIGCHLD as u64;
    for (flag, name) in [
        (nix::libc::CLONE_NEWUSER, "clone(NEWUSER)"),
        (nix::libc::CLONE_NEWNS, "clone(NEWNS)"),
        (nix::libc::CLONE_NEWNET, "clone(NEWNET)"),
        (nix::libc::CLONE_NEWPID, "clone(NEWPID)"),
    ] {
        calls.push((name.into(), clone, [flag as u64 | sigchld, 0]));
    }
    calls.push((
        "personality(ADDR_NO_RANDOMIZE)".into(),
        nix::libc::SYS_personality,
        [0x0040000, 0],
    ));
    let table: String = calls
        .iter()
        .map(|(name, nr, [a, b])| format!("    ({name:?}, {nr}, {a}, {b}),\n"))
        .collect();
    let script = format!(
        r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, a=0, b=0):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), ctypes.c_ulong(a), ctypes.c_ulong(b),
                     ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    return r, errno.errorcode.get(ctypes.get_errno(), "0")
CALLS = [
{table}]
for name, nr, a, b in CALLS:
    r, e = call(nr, a, b)
    print("call", name, r, e, flush=True)
print("clone3", *call({clone3}, 0, 0))
print("personality(query)", call({personality}, 0xffffffff)[0] >= 0)
print("getpid", call({getpid})[0] > 0)
for line in open("/proc/self/status"):
    if line.startswith("Seccomp"):
        print(line.strip().replace("\t", " "))
"#,
        clone3 = nix::libc::SYS_clone3,
        personality = nix::libc::SYS_personality,
        getpid = nix::libc::SYS_getpid,
    );
    let dir = work_dir(&[("calls.py", script.as_str())]);
    let done = run(sb, request(&dir, "python3 calls.py", limits())).await;
    assert_eq!(
        done.outcome.termination,
        Termination::Exited(0),
        "{:?}",
        done.lines
    );
    let answered: Vec<&String> = done
        .lines
        .iter()
        .filter(|l| l.starts_with("call "))
        .collect();
    assert_eq!(answered.len(), calls.len(), "{:?}", done.lines);
    for (line, (name, _, _)) in answered.iter().zip(&calls) {
        assert_eq!(
            **line,
            format!("call {name} -1 EPERM"),
            "{name} was not refused with EPERM"
        );
    }
    // `clone3` says "not implemented" so that the C library falls back to `clone`.
    assert!(done.has("clone3 -1 ENOSYS"), "{:?}", done.lines);
    assert!(done.has("personality(query) True"), "{:?}", done.lines);
    assert!(done.has("getpid True"), "{:?}", done.lines);
    assert!(done.has("Seccomp: 2"), "{:?}", done.lines);
    assert!(done.has("Seccomp_filters: 2"), "{:?}", done.lines);
}

#[tokio::test]
async fn the_filter_files_do_not_leak_into_the_program() {
    let Some(sb) = sandbox() else { return };
    let cmd = "for fd in /proc/self/fd/*; do readlink $fd; done; true";
    let done = run(sb, request(&work_dir(&[]), cmd, limits())).await;
    assert_eq!(done.outcome.termination, Termination::Exited(0));
    // bubblewrap read and closed fds 3 and 4; nothing the program holds is a filter file.
    assert!(
        !done
            .lines
            .iter()
            .any(|l| l.contains("seccomp") || l.contains(".sandbox-etc")),
        "{:?}",
        done.lines
    );
    assert!(done.has("/dev/null"), "{:?}", done.lines);
    // Nor a descriptor of the runtime's folders: one outside the sandbox's root would lead
    // out of it.
    let runtime = sb.runtime("python").unwrap();
    assert!(
        !done.lines.iter().any(|l| l == "/usr"
            || l == "/etc"
            || l.contains(runtime.usr.to_str().unwrap())
            || l.contains(runtime.etc.to_str().unwrap())),
        "{:?}",
        done.lines
    );
}

#[tokio::test]
async fn python_java_and_r_still_run_under_the_filter() {
    let Some(sb) = sandbox() else { return };
    let lim = Limits {
        memory_mib: 1024,
        disk_mib: 256,
        pids: 256,
        wall_seconds: 120,
        ..limits()
    };
    let python = "import threading, subprocess\n\
                  t = threading.Thread(target=lambda: print('thread ok', flush=True)); t.start(); t.join()\n\
                  print(subprocess.run(['echo', 'child ok'], capture_output=True, text=True).stdout.strip())\n";
    let java = "public class Main { public static void main(String[] a) throws Exception {\n\
                Thread t = new Thread(() -> System.out.println(\"java thread ok\")); t.start(); t.join();\n\
                System.out.println(\"java ok\"); } }\n";
    let r = "x <- sum(1:10)\ncat('r ok', x, '\\n')\n";
    for (language, file, content, cmd, expected) in [
        (
            "python",
            "main.py",
            python,
            "python3 main.py",
            vec!["thread ok", "child ok"],
        ),
        (
            "java",
            "Main.java",
            java,
            "java Main.java",
            vec!["java thread ok", "java ok"],
        ),
        ("r", "main.R", r, "Rscript main.R", vec!["r ok 55 "]),
    ] {
        let dir = work_dir(&[(file, content)]);
        let done = run(sb, request_in(language, &dir, cmd, lim)).await;
        assert_eq!(
            done.outcome.termination,
            Termination::Exited(0),
            "{language}: {:?}",
            done.lines
        );
        // The JVM says once that it picked up the runtime's options (on stderr).
        let lines: Vec<&str> = done
            .lines
            .iter()
            .map(String::as_str)
            .filter(|l| !l.starts_with("Picked up JAVA_TOOL_OPTIONS"))
            .collect();
        assert_eq!(lines, expected, "{language}");
    }
}

/// The path rules of task files, which outputs follow too.
fn task_paths() -> coderun_shared::config::LimitSettings {
    coderun_shared::config::Settings::with_overrides([("local_stack", "true".to_string())])
        .unwrap()
        .limits
}

#[tokio::test]
async fn host_tools_are_not_found_in_any_runtime() {
    let Some(sb) = sandbox() else { return };
    // The host has a compiler (cargo builds C with it) and more; a run sees only its runtime.
    let cmd = "for t in gcc cc c++ make curl wget sudo apt-get cargo rustc bwrap; do \
               command -v $t >/dev/null && echo FOUND $t; done; \
               ls /usr/bin/gcc* /usr/lib/gcc 2>/dev/null; echo done";
    for language in TEST_RUNTIMES {
        let done = run(sb, request_in(language, &work_dir(&[]), cmd, limits())).await;
        assert_eq!(done.lines, ["done"], "{language}");
    }
}

#[test]
fn a_missing_runtime_is_a_clear_preflight_error_naming_how_to_build_it() {
    let empty = tests_root().join(format!("no-runtimes-{}", Uuid::new_v4()));
    let config = SandboxConfig {
        runtimes_dir: empty.clone(),
        ..test_config()
    };
    let message = Sandbox::new(config).unwrap_err().to_string();
    assert!(message.contains("\"python\""), "{message}");
    assert!(
        message.contains(&empty.join("python").display().to_string()),
        "{message}"
    );
    assert!(message.contains("just runtimes"), "{message}");
    assert!(message.contains("infra/runtimes/build.py"), "{message}");
}

#[tokio::test]
async fn the_jvm_sizes_its_heap_and_threads_from_the_runs_limits() {
    let Some(sb) = sandbox() else { return };
    let java = "public class Main { public static void main(String[] a) {\n\
                Runtime r = Runtime.getRuntime();\n\
                System.out.println(\"heap \" + r.maxMemory() / (1024 * 1024));\n\
                System.out.println(\"cpus \" + r.availableProcessors()); } }\n";
    for (memory_mib, cpu_millis) in [(256, 1000), (1024, 2000)] {
        let lim = Limits {
            memory_mib,
            cpu_millis,
            disk_mib: 64,
            pids: 128,
            wall_seconds: 60,
        };
        let dir = work_dir(&[("Main.java", java)]);
        let done = run(sb, request_in("java", &dir, "java Main.java", lim)).await;
        assert_eq!(
            done.outcome.termination,
            Termination::Exited(0),
            "{:?}",
            done.lines
        );
        let value = |key: &str| -> u64 {
            done.lines
                .iter()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{key}: {:?}", done.lines))
        };
        // Half the run's memory (the host has many GiB), the cpus of its share.
        let heap = value("heap ");
        assert!(
            heap <= u64::from(memory_mib) / 2 && heap >= u64::from(memory_mib) / 3,
            "heap {heap} MiB for a {memory_mib} MiB run"
        );
        assert_eq!(value("cpus "), u64::from(cpu_millis / 1000));
    }
}

#[tokio::test]
async fn python_and_r_thread_pools_follow_the_runs_cpus() {
    let Some(sb) = sandbox() else { return };
    // OpenBLAS would start one thread per host cpu; the run has one.
    let python = "from threadpoolctl import threadpool_info\n\
                  import numpy\n\
                  print('blas', max(p['num_threads'] for p in threadpool_info()))\n";
    let done = run(
        sb,
        request(&work_dir(&[("t.py", python)]), "python3 t.py", limits()),
    )
    .await;
    assert_eq!(done.lines, ["blas 1"], "{:?}", done.lines);
    let r =
        "library(data.table)\ncat('dt', getDTthreads(), Sys.getenv('OMP_NUM_THREADS'), '\\n')\n";
    let lim = Limits {
        cpu_millis: 1500,
        ..limits()
    };
    let done = run(
        sb,
        request_in("r", &work_dir(&[("t.R", r)]), "Rscript t.R", lim),
    )
    .await;
    assert_eq!(done.lines, ["dt 2 2 "], "{:?}", done.lines);
}
