//! The language runtimes a run executes in: root filesystems built from the recipes in
//! `infra/runtimes/` by `infra/runtimes/build.py`, one folder per language under the runtimes
//! folder (`<name>` links to the current build, holding `root/` and `runtime.json`).
//!
//! The rule it keeps: a program sees the runtime's `/usr` and `/etc`, never the host's, and a
//! missing, broken or unreachable runtime stops the worker at start-up with the command that
//! builds it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Limits;
use super::preflight::PreflightError;

/// How a missing runtime is built (in the preflight's message).
pub const BUILD_HINT: &str = "build it with `just runtimes` (or `python3 infra/runtimes/build.py \
                              NAME`; infra/local/install-deps.sh installs mmdebstrap)";

/// The runtimes folder: `configured` unless empty, else `$CODERUN_RUNTIMES_DIR`, else
/// `/var/cache/coderun/runtimes` for root, else `$CODERUN_CACHE/runtimes`, else
/// `~/.cache/coderun/runtimes` — where `build.py` puts them by the same rule.
pub fn runtimes_dir(configured: &Path) -> PathBuf {
    if !configured.as_os_str().is_empty() {
        return configured.to_path_buf();
    }
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("CODERUN_RUNTIMES_DIR") {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        // Runs' uids must reach it; a cache in root's home (0700) is closed to them.
        return PathBuf::from("/var/cache/coderun/runtimes");
    }
    let cache = var("CODERUN_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(var("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache")
            .join("coderun")
    });
    cache.join("runtimes")
}

/// What `build.py` recorded of one build (`runtime.json`).
#[derive(Debug, Clone, Deserialize)]
struct Manifest {
    name: String,
    version: String,
    /// The program's environment; `{cpus}` and `{memory_mib}` stand for the run's limits.
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

/// One built runtime, checked at start-up.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub name: String,
    /// The Debian version of the language's main package.
    pub version: String,
    /// Mounted read-only as the program's `/usr`.
    pub usr: PathBuf,
    /// Mounted read-only as the program's `/etc` (the sandbox binds its own `passwd`, `group`
    /// and `hosts` over it).
    pub etc: PathBuf,
    /// The top-level links of the root filesystem (`/bin` → `usr/bin` …), recreated as they are.
    pub links: Vec<(PathBuf, PathBuf)>,
    env: Vec<(String, String)>,
}

impl Runtime {
    /// Loads the current build of runtime `name` from `dir`.
    pub fn load(name: &str, dir: &Path) -> Result<Runtime, PreflightError> {
        let build = dir.join(name);
        let missing = |detail: String| PreflightError::MissingRuntime {
            name: name.to_owned(),
            path: build.display().to_string(),
            detail,
        };
        let manifest_path = build.join("runtime.json");
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| missing(format!("{}: {e}", manifest_path.display())))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| missing(format!("{}: {e}", manifest_path.display())))?;
        if manifest.name != name {
            return Err(missing(format!(
                "{} describes runtime {:?}",
                manifest_path.display(),
                manifest.name
            )));
        }
        // Resolved once: a rebuild moves the link to a new folder, which a running worker
        // only picks up when it restarts (the old folder is gone then, and so are its runs).
        let root = std::fs::canonicalize(build.join("root"))
            .map_err(|e| missing(format!("{}: {e}", build.join("root").display())))?;
        if !root.join("usr/bin/sh").exists() {
            return Err(missing(format!("{} has no usr/bin/sh", root.display())));
        }
        if nix::unistd::geteuid().is_root() {
            // bubblewrap mounts the folders by path as the run's uid, which owns nothing on
            // the way there.
            if let Some(closed) = closed_to_others(&root) {
                return Err(missing(format!(
                    "{} is not searchable by others, so a run's uid cannot reach the runtime; \
                     set worker.runtimes_dir (or CODERUN_RUNTIMES_DIR) to a folder outside a \
                     private home, e.g. /var/cache/coderun/runtimes",
                    closed.display()
                )));
            }
        }
        let mut links = Vec::new();
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let path = root.join(top);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(&path)
                        .map_err(|e| missing(format!("{}: {e}", path.display())))?;
                    links.push((target, Path::new("/").join(top)));
                }
                // Only a merged-/usr root can be shown through its /usr alone.
                Ok(_) => {
                    return Err(missing(format!(
                        "{} is not a link into usr/ (not a merged-/usr root filesystem)",
                        path.display()
                    )));
                }
                Err(_) => {}
            }
        }
        Ok(Runtime {
            name: name.to_owned(),
            version: manifest.version,
            usr: root.join("usr"),
            etc: root.join("etc"),
            links,
            env: manifest.env.into_iter().collect(),
        })
    }

    /// The runtime's variables for a run with these limits: `{cpus}` is the cpu limit rounded
    /// up to whole cpus, `{memory_mib}` the spec's memory (the disk budget not included).
    pub fn env(&self, limits: &Limits) -> Vec<(String, String)> {
        let cpus = limits.cpu_millis.div_ceil(1000).max(1).to_string();
        let memory = limits.memory_mib.to_string();
        self.env
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.replace("{cpus}", &cpus).replace("{memory_mib}", &memory),
                )
            })
            .collect()
    }
}

/// The first folder from `/` down to `path` that others may not search (`o+x`), if any.
fn closed_to_others(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|dir| {
            std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 == 0)
        })
        .map(Path::to_path_buf)
}

/// Builds (or finds already built) the runtimes `names` with `infra/runtimes/build.py` into
/// [`runtimes_dir`]`("")`: for tests and tools that need a runtime before a sandbox starts. The
/// builder caches by recipe and serialises concurrent builds, so calling it often is cheap.
pub fn ensure_built(names: &[&str]) -> Result<PathBuf, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = repo.join("infra/runtimes/build.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .args(names)
        .output()
        .map_err(|e| format!("cannot start {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} {names:?} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(runtimes_dir(Path::new("")))
}
