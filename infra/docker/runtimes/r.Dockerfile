# GENERATED from infra/runtimes/r.toml by infra/runtimes/build.py --dockerfiles: edit the recipe.
# Run image for r tasks (languages.r.image), as uid 65534:
#   docker build -f infra/docker/runtimes/r.Dockerfile -t coderun/run-r:bookworm infra/docker/runtimes
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
        r-base-core \
        r-recommended \
        r-cran-data.table \
    && rm -rf /var/lib/apt/lists/* \
    && for tool in gcc cc c++ make curl wget sudo; do if command -v "$tool"; then exit 1; fi; done
USER 65534:65534
# The versions the recipe declares, then the recipe's own check.
RUN v="$(dpkg-query -W -f "\${Version}" r-base-core)" && case "${v#*:}" in 4.2|4.2[.+~-]*) ;; *) echo "r-base-core $v is not 4.2" >&2; exit 1 ;; esac \
    && v="$(dpkg-query -W -f "\${Version}" r-recommended)" && case "${v#*:}" in 4.2|4.2[.+~-]*) ;; *) echo "r-recommended $v is not 4.2" >&2; exit 1 ;; esac \
    && v="$(dpkg-query -W -f "\${Version}" r-cran-data.table)" && case "${v#*:}" in 1.14|1.14[.+~-]*) ;; *) echo "r-cran-data.table $v is not 1.14" >&2; exit 1 ;; esac \
    && Rscript -e 'library(data.table); library(MASS); library(Matrix)'
