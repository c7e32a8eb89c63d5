#!/usr/bin/env python3
"""Builds the language runtimes from their recipes (infra/runtimes/<name>.toml).

From one recipe come both:
  - the root filesystem the local sandbox mounts read-only as a run's /usr and /etc, built with
    mmdebstrap from Debian's packages into a cache folder and reused until the recipe changes;
  - the Dockerfile of the Kubernetes run image (infra/docker/runtimes/<name>.Dockerfile), which
    installs the same packages from the same Debian suite.

    build.py [NAME ...]              build what is missing or stale (all recipes by default)
    build.py --dockerfiles           write the Dockerfiles from the recipes
    build.py --dockerfiles --check   exit 1 if a Dockerfile differs from its recipe
    build.py --where                 print the folder the root filesystems live in

The cache folder is $CODERUN_RUNTIMES_DIR, else /var/cache/coderun/runtimes as root (the runs'
uids must be able to reach it, and a home folder under /root is closed to them), else
$CODERUN_CACHE/runtimes, else ~/.cache/coderun/runtimes. Each build lives in <name>-<hash of its recipe>/ (root/ and
runtime.json, the record of what was installed) and <name> links to the current one; older
builds of the same name are removed. Concurrent builders of one name wait for each other.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DOCKER = REPO / "infra" / "docker" / "runtimes"

SUITE = "bookworm"
# The Debian release the run images start from: the same suite as the root filesystems.
BASE_IMAGE = "debian:bookworm-20250520-slim"
# Bump when a change here changes what a root filesystem holds: every runtime is rebuilt.
BUILDER_VERSION = "1"
# Host tools a run must not find (checked in every root filesystem and image).
FORBIDDEN = ["gcc", "cc", "c++", "make", "curl", "wget", "sudo"]
# Files a run never needs, left out of the root filesystems.
DPKG_EXCLUDES = [
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
]
# Removed from the root filesystem's /etc: secrets' places and the build host's own network
# settings. The sandbox binds its own passwd, group and hosts over the ones left (and hosts
# must exist for that, /etc being read-only).
ETC_REMOVED = ["shadow", "shadow-", "gshadow", "gshadow-", "passwd-", "group-", "resolv.conf",
               "hostname", "mailname"]


def die(message: str) -> None:
    print(f"runtimes: {message}", file=sys.stderr)
    sys.exit(1)


def recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(HERE.glob("*.toml"))}


def load(path: Path) -> dict:
    recipe = tomllib.loads(path.read_text())
    if recipe.get("name") != path.stem:
        die(f"{path}: name must be {path.stem!r}")
    for key in ("version", "packages", "libraries", "check"):
        if key not in recipe:
            die(f"{path}: `{key}` is missing")
    return recipe


def recipe_hash(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    digest.update(f"builder {BUILDER_VERSION} suite {SUITE}".encode())
    return digest.hexdigest()[:16]


def runtimes_dir() -> Path:
    """The same rule as the worker's (worker/src/sandbox/runtime.rs)."""
    if os.environ.get("CODERUN_RUNTIMES_DIR"):
        return Path(os.environ["CODERUN_RUNTIMES_DIR"])
    if os.geteuid() == 0:
        # Runs' uids must reach it, which a cache under /root (0700) does not allow.
        return Path("/var/cache/coderun/runtimes")
    cache = os.environ.get("CODERUN_CACHE") or str(Path.home() / ".cache" / "coderun")
    return Path(cache) / "runtimes"


def mirrors() -> list[str]:
    debian = os.environ.get("CODERUN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    security = os.environ.get("CODERUN_DEBIAN_SECURITY", "http://deb.debian.org/debian-security")
    return [
        f"deb {debian} {SUITE} main",
        f"deb {debian} {SUITE}-updates main",
        f"deb {security} {SUITE}-security main",
    ]


def strip_epoch(version: str) -> str:
    return version.split(":", 1)[-1]


def matches(version: str, prefix: str) -> bool:
    """Whether Debian `version` is `prefix` or a release of it (`1.2` takes 1.2.1, not 1.24)."""
    v = strip_epoch(version)
    return v == prefix or (v.startswith(prefix) and v[len(prefix)] in ".-+~")


def installed(root: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
        check=True, capture_output=True, text=True).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def sandbox_argv(root: Path, env: dict[str, str], command: str) -> list[str]:
    """`command` in `root` the way the local sandbox shows it: read-only, no network."""
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", str(root), "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp", "--clearenv"]
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    for key, value in {**base, **env}.items():
        argv += ["--setenv", key, value]
    return argv + ["/bin/sh", "-c", command]


def expand(env: dict[str, str], cpus: int, memory_mib: int) -> dict[str, str]:
    return {k: v.replace("{cpus}", str(cpus)).replace("{memory_mib}", str(memory_mib))
            for k, v in env.items()}


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def build(name: str, path: Path, base: Path) -> dict:
    recipe = load(path)
    key = recipe_hash(path)
    final = base / f"{name}-{key}"
    link = base / name
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest_path = final / "runtime.json"
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            point(link, final.name)
            return manifest | {"reused": True}

        if shutil.which("mmdebstrap") is None:
            die("mmdebstrap not found: apt-get install mmdebstrap (infra/local/install-deps.sh "
                "does it as root)")
        work = base / f".{name}-{key}.building"
        if work.exists():
            # An interrupted build may have left /proc or /dev mounted inside its root.
            mounts = Path("/proc/self/mounts").read_text().split("\n")
            inside = [m.split()[1] for m in mounts if m and m.split()[1].startswith(f"{work}/")]
            if inside:
                die(f"an interrupted build left mounts inside {work}: {inside}; unmount them "
                    "(umount -R) and build again")
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=True)
        work.mkdir()
        root = work / "root"
        started = time.monotonic()
        print(f"runtimes: building {name} from {path.relative_to(REPO)} into {final} "
              "(a few minutes, once)", flush=True)
        argv = ["mmdebstrap", "--quiet", "--variant=essential",
                "--aptopt=APT::Install-Recommends \"false\"",
                f"--include={','.join(recipe['packages'])}"]
        argv += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
        # The JDK's postinst registers its man pages with update-alternatives, which fails
        # when their folder is missing (the man pages themselves are left out above).
        argv.append('--essential-hook=mkdir -p "$1/usr/share/man/man1"')
        if recipe.get("remove"):
            argv.append("--chrooted-customize-hook=dpkg --purge --force-depends "
                        + " ".join(recipe["remove"]))
        argv += [SUITE, str(root), *mirrors()]
        log = work / "mmdebstrap.log"
        with open(log, "w") as out:
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                sys.stderr.write(log.read_text()[-4000:])
                die(f"mmdebstrap failed for {name} (log: {log})")

        for entry in ETC_REMOVED:
            (root / "etc" / entry).unlink(missing_ok=True)
        (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n")
        found = [t for d in ("usr/bin", "usr/sbin", "usr/local/bin")
                 for t in FORBIDDEN if os.path.lexists(root / d / t)]
        if found:
            die(f"{name}: the root filesystem holds host tools a run must not have: {found}")

        versions = installed(root)
        declared = [("version", recipe["version"])] + [
            (lib["name"], lib) for lib in recipe["libraries"]]
        for what, want in declared:
            have = versions.get(want["package"])
            if have is None or not matches(have, want["prefix"]):
                die(f"{name}: {what}: the recipe declares {want['package']} {want['prefix']}*, "
                    f"Debian installed {have}; update {path.relative_to(REPO)}")

        env = recipe.get("env", {})
        check = subprocess.run(sandbox_argv(root, expand(env, 1, 512), recipe["check"]),
                               capture_output=True, text=True)
        if check.returncode != 0:
            die(f"{name}: the recipe's check failed ({check.returncode}): "
                f"{(check.stdout + check.stderr)[-2000:]}")

        manifest = {
            "name": name,
            "recipe": str(path.relative_to(REPO)),
            "recipe_hash": key,
            "suite": SUITE,
            "version": strip_epoch(versions[recipe["version"]["package"]]),
            "libraries": [{"name": lib["name"], "package": lib["package"],
                           "version": strip_epoch(versions[lib["package"]])}
                          for lib in recipe["libraries"]],
            "packages": versions,
            "env": env,
            "build_seconds": round(time.monotonic() - started, 1),
            "size_bytes": du_bytes(root),
        }
        (work / "runtime.json").write_text(json.dumps(manifest, indent=2) + "\n")
        log.unlink()
        if final.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(final)], check=True)
        work.rename(final)
        point(link, final.name)
        for old in base.glob(f"{name}-*"):
            if old != final and old.is_dir():
                subprocess.run(["rm", "-rf", "--one-file-system", str(old)], check=True)
        print(f"runtimes: built {name} {manifest['version']} in {manifest['build_seconds']} s, "
              f"{manifest['size_bytes'] / 2**20:.0f} MiB", flush=True)
        share_identical_files(base)
        return manifest | {"reused": False}


def share_identical_files(base: Path) -> None:
    """Hard-links files that are identical (content, mode, owner, time) across the current
    builds: the runtimes share Debian's base and Java and Scala a JDK, about a third of their
    size. Safe because nothing writes into a finished build: a rebuild makes a new folder and
    removing an old one only drops its links. Only finished builds take part (a build in
    progress is still being written)."""
    if shutil.which("hardlink") is None:
        return
    current = [p.resolve() for p in base.iterdir()
               if p.is_symlink() and (p.resolve() / "runtime.json").is_file()]
    if len(current) > 1:
        # A concurrent build of another runtime may remove its old folder meanwhile: whatever
        # hardlink misses then only costs disk.
        subprocess.run(["hardlink", "--quiet", *map(str, current)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def point(link: Path, target: str) -> None:
    """`link` → `target`, replaced atomically."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    tmp = link.with_name(f".{link.name}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.rename(link)


def dockerfile(name: str, path: Path) -> str:
    recipe = load(path)
    rel = path.relative_to(REPO)
    packages = " \\\n        ".join(recipe["packages"])
    remove = ""
    if recipe.get("remove"):
        remove = ("    && dpkg --purge --force-depends \\\n        "
                  + " \\\n        ".join(recipe["remove"]) + " \\")
    # Values that depend on the run ({cpus}, {memory_mib}) are the local sandbox's: in a Pod
    # the JVM reads the container's own cgroup limits.
    env = {k: v for k, v in recipe.get("env", {}).items() if "{" not in v}
    lines = [
        f"# GENERATED from {rel} by infra/runtimes/build.py --dockerfiles: edit the recipe.",
        f"# Run image for {name} tasks (languages.{name}.image), as uid 65534:",
        f"#   docker build -f infra/docker/runtimes/{name}.Dockerfile -t coderun/run-{name}:{SUITE} "
        "infra/docker/runtimes",
        f"# The same Debian packages from the same suite ({SUITE}) as the local sandbox's root",
        "# filesystem, so a run sees the same versions in both executors.",
        f"FROM {BASE_IMAGE}",
        "# The suite pins the versions (a stable release only takes fixes); the last step fails",
        "# the build if they drift from the recipe's.",
        "# The JDK's postinst fails without the man folder, which the slim image leaves out.",
        "# hadolint ignore=DL3008",
        "RUN mkdir -p /usr/share/man/man1 \\",
        "    && apt-get update \\",
        "    && apt-get install -y --no-install-recommends \\",
        f"        {packages} \\",
        "    && rm -rf /var/lib/apt/lists/* \\",
        *([remove] if remove else []),
        f"    && for tool in {' '.join(FORBIDDEN)}; do "
        "if command -v \"$tool\"; then exit 1; fi; done",
    ]
    if env:
        lines.append("ENV " + " \\\n    ".join(f"{k}={v}" for k, v in env.items()))
    declared = [recipe["version"]] + recipe["libraries"]
    checks = [
        f"v=\"$(dpkg-query -W -f \"\\${{Version}}\" {d['package']})\" && case \"${{v#*:}}\" in "
        f"{d['prefix']}|{d['prefix']}[.+~-]*) ;; *) echo \"{d['package']} $v is not {d['prefix']}\" >&2; exit 1 ;; esac"
        for d in declared]
    lines += ["USER 65534:65534",
              "# The versions the recipe declares, then the recipe's own check.",
              "RUN " + " \\\n    && ".join(checks + [recipe["check"]]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="runtimes to build (default: all recipes)")
    parser.add_argument("--dockerfiles", action="store_true", help="write the run Dockerfiles")
    parser.add_argument("--check", action="store_true", help="with --dockerfiles: only compare")
    parser.add_argument("--where", action="store_true", help="print the cache folder")
    args = parser.parse_args()
    known = recipes()
    if args.where:
        print(runtimes_dir())
        return
    if args.dockerfiles:
        stale = []
        for name, path in known.items():
            target = DOCKER / f"{name}.Dockerfile"
            text = dockerfile(name, path)
            if args.check:
                if not target.is_file() or target.read_text() != text:
                    stale.append(str(target.relative_to(REPO)))
            else:
                target.write_text(text)
        if stale:
            die(f"not generated from their recipes: {', '.join(stale)}; run "
                "python3 infra/runtimes/build.py --dockerfiles")
        return
    unknown = [n for n in args.names if n not in known]
    if unknown:
        die(f"no recipe for {unknown} (known: {', '.join(known)})")
    base = runtimes_dir()
    for name in args.names or list(known):
        build(name, known[name], base)


if __name__ == "__main__":
    main()
