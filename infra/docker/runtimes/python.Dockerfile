# GENERATED from infra/runtimes/python.toml by infra/runtimes/build.py --dockerfiles: edit the recipe.
# Run image for python tasks (languages.python.image), as uid 65534:
#   docker build -f infra/docker/runtimes/python.Dockerfile -t coderun/run-python:bookworm infra/docker/runtimes
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
        python3 \
        python3-numpy \
        python3-pandas \
        python3-scipy \
        python3-sklearn \
        python3-matplotlib \
    && rm -rf /var/lib/apt/lists/* \
    && dpkg --purge --force-depends \
        python3-pythran \
        python3-beniget \
        python3-gast \
        libxsimd-dev \
        g++ \
        g++-12 \
        gcc \
        gcc-12 \
        cpp \
        cpp-12 \
        libstdc++-12-dev \
        libgcc-12-dev \
        binutils \
        binutils-x86-64-linux-gnu \
        binutils-common \
        libbinutils \
        libctf0 \
        libctf-nobfd0 \
        libgprofng0 \
        libcc1-0 \
        libboost-dev \
        libboost1.74-dev \
        libopenblas-dev \
        libopenblas-pthread-dev \
        python3-all-dev \
        libpython3-all-dev \
        python3-dev \
        libpython3-dev \
        python3.11-dev \
        libpython3.11-dev \
        libc6-dev \
        libc-dev-bin \
        linux-libc-dev \
        libcrypt-dev \
        libnsl-dev \
        libtirpc-dev \
        libexpat1-dev \
        zlib1g-dev \
        rpcsvc-proto \
    && for tool in gcc cc c++ make curl wget sudo; do if command -v "$tool"; then exit 1; fi; done
ENV MPLBACKEND=Agg \
    PYTHONDONTWRITEBYTECODE=1
USER 65534:65534
# The versions the recipe declares, then the recipe's own check.
RUN v="$(dpkg-query -W -f "\${Version}" python3)" && case "${v#*:}" in 3.11|3.11[.+~-]*) ;; *) echo "python3 $v is not 3.11" >&2; exit 1 ;; esac \
    && v="$(dpkg-query -W -f "\${Version}" python3-numpy)" && case "${v#*:}" in 1.24|1.24[.+~-]*) ;; *) echo "python3-numpy $v is not 1.24" >&2; exit 1 ;; esac \
    && v="$(dpkg-query -W -f "\${Version}" python3-pandas)" && case "${v#*:}" in 1.5|1.5[.+~-]*) ;; *) echo "python3-pandas $v is not 1.5" >&2; exit 1 ;; esac \
    && v="$(dpkg-query -W -f "\${Version}" python3-scipy)" && case "${v#*:}" in 1.10|1.10[.+~-]*) ;; *) echo "python3-scipy $v is not 1.10" >&2; exit 1 ;; esac \
    && v="$(dpkg-query -W -f "\${Version}" python3-sklearn)" && case "${v#*:}" in 1.2|1.2[.+~-]*) ;; *) echo "python3-sklearn $v is not 1.2" >&2; exit 1 ;; esac \
    && v="$(dpkg-query -W -f "\${Version}" python3-matplotlib)" && case "${v#*:}" in 3.6|3.6[.+~-]*) ;; *) echo "python3-matplotlib $v is not 3.6" >&2; exit 1 ;; esac \
    && python3 -c 'import numpy, pandas, scipy, sklearn, matplotlib.pyplot'
