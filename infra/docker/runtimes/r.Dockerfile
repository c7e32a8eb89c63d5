# Run image for R tasks (languages.r.image): the official image, as uid 65534.
#   docker build -f infra/docker/runtimes/r.Dockerfile -t coderun/run-r:4.4.1 infra/docker/runtimes
# Packages a course needs (from Debian's r-cran-* packages) belong in a derived image: runs have
# no network to install anything.
FROM r-base:4.4.1
USER 65534:65534
