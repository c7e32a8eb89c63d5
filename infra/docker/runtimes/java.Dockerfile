# Run image for Java tasks (languages.java.image): the official Temurin JDK (the default command
# `java Main.java` compiles the source in memory), as uid 65534.
#   docker build -f infra/docker/runtimes/java.Dockerfile -t coderun/run-java:21 infra/docker/runtimes
FROM eclipse-temurin:21.0.4_7-jdk-jammy
USER 65534:65534
