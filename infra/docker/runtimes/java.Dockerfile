# GENERATED from infra/runtimes/java.toml by infra/runtimes/build.py --dockerfiles: edit the recipe.
# Run image for java tasks (languages.java.image), as uid 65534:
#   docker build -f infra/docker/runtimes/java.Dockerfile -t coderun/run-java:bookworm infra/docker/runtimes
# The same Debian packages from the same suite (bookworm) as the local sandbox's root
# filesystem, so a run sees the same versions in both executors.
FROM debian:bookworm-20250520-slim
# The suite pins the versions (a stable release only takes fixes); the last step fails
# the build if they drift from the recipe's.
# The JDK's postinst fails without the man folder, which the slim image leaves out.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        default-jdk-headless \
    && rm -rf /var/lib/apt/lists/* \
    && for tool in gcc cc c++ make curl wget sudo; do if command -v "$tool"; then exit 1; fi; done
USER 65534:65534
# The versions the recipe declares, then the recipe's own check.
RUN v="$(dpkg-query -W -f "\${Version}" openjdk-17-jdk-headless)" && case "${v#*:}" in 17|17[.+~-]*) ;; *) echo "openjdk-17-jdk-headless $v is not 17" >&2; exit 1 ;; esac \
    && javac -version && java -version
