# Run image for Scala tasks (languages.scala.image), as uid 65534.
#   docker build -f infra/docker/runtimes/scala.Dockerfile -t coderun/run-scala:1.5.0 infra/docker/runtimes
#
# Unlike the other run images this one does one more thing: runs have no network, and scala-cli
# fetches the Scala compiler, the standard library and (if the image has none) a JVM from Maven
# Central on first use. So the image runs a hello-world once at build time, as uid 65534, and
# keeps everything it fetched under /opt/coderun-scala, which stays readable at run time.
# The Job sets HOME=/tmp (an emptyDir) for the program, so the caches are found through
# COURSIER_CACHE and COURSIER_ARCHIVE_CACHE, which it leaves alone; HOME points at
# /opt/coderun-scala only for this build. Check an image offline before rolling it out:
#   docker run --rm --network none --read-only --tmpfs /tmp -e HOME=/tmp -u 65534:65534 -w /tmp \
#     IMAGE sh -c 'printf "@main def m(): Unit = println(1)\n" > M.scala && scala-cli run --server=false .'
FROM virtuslab/scala-cli:1.5.0
USER 0:0
ENV HOME=/opt/coderun-scala \
    COURSIER_CACHE=/opt/coderun-scala/coursier \
    COURSIER_ARCHIVE_CACHE=/opt/coderun-scala/coursier-archives
RUN mkdir -p /opt/coderun-scala/warm \
    && printf '@main def main(): Unit =\n  println("warm")\n' > /opt/coderun-scala/warm/Main.scala \
    && chown -R 65534:65534 /opt/coderun-scala
USER 65534:65534
WORKDIR /opt/coderun-scala/warm
# The same command as the language's default (languages.scala.command).
RUN scala-cli run --server=false . \
    && rm -rf /opt/coderun-scala/warm/.scala-build
WORKDIR /
