# altlake's Airflow: one image for the scheduler, dag-processor, triggerer and api-server (and the
# `airflow db migrate` init), on the official apache/airflow image of the version requirements.txt
# pins. Tasks run in the scheduler (LocalExecutor) or in pods of this image (KubernetesExecutor),
# so it also holds what they run: our packages, the pinned environment, Java 17, the Delta /
# hadoop-aws jars and our DynamoDB log store for the `local` Spark backend, and pyspark's
# spark-submit for the `submit` one.
#
#   docker build -f infra/docker/airflow.Dockerfile -t altlake-airflow:0.1.0 .
#   docker run --rm -e AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://... altlake-airflow:0.1.0 scheduler
#
# The official entrypoint runs `airflow <command>` (so `scheduler`, `api-server`, `db migrate`).
# Base images are pinned by tag; to pin by digest as well, replace a tag with tag@sha256:<digest>
# (`docker buildx imagetools inspect apache/airflow:3.3.2-python3.11` prints the digest), e.g.
#   docker build --build-arg AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11@sha256:<digest> ...
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
ARG MAVEN_IMAGE=maven:3.9.11-eclipse-temurin-17
ARG JRE_IMAGE=eclipse-temurin:17-jre-jammy
ARG BUILD_PYTHON_IMAGE=python:3.11-slim-bookworm

# The jars scripts/setup.sh resolves, with the same flags: Spark's own scala-library and antlr4
# stay out (pyspark ships them).
FROM ${MAVEN_IMAGE} AS jars
COPY infra/spark/jars-pom.xml /build/jars-pom.xml
RUN mvn -q -f /build/jars-pom.xml dependency:copy-dependencies \
      -DincludeScope=runtime -DexcludeArtifactIds=scala-library,antlr4-runtime -DoutputDirectory=/jars

# Our Delta log store for several writers on S3 (infra/spark/logstore, as scripts/setup.sh builds it),
# compiled against the jars above and pyspark's own (Hadoop, slf4j) of the pinned version.
FROM ${BUILD_PYTHON_IMAGE} AS pyspark
COPY infra/docker/spark-requirements.txt /tmp/spark-requirements.txt
RUN pip install --no-cache-dir --no-deps "$(grep -E '^pyspark==' /tmp/spark-requirements.txt)"

FROM ${MAVEN_IMAGE} AS logstore
COPY --from=pyspark /usr/local/lib/python3.11/site-packages/pyspark/jars/ /spark-jars/
COPY --from=jars /jars/ /jars/
COPY infra/spark/logstore/ /build/logstore/
RUN javac --release 17 -nowarn -d /build/classes -cp "/spark-jars/*:/jars/*" /build/logstore/*.java \
 && jar cf /jars/altlake-logstore.jar -C /build/classes .

# The C WAT readers (native/watread) as a wheel: the compiler stays in this stage.
FROM ${BUILD_PYTHON_IMAGE} AS native
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY native/watread/ /build/watread/
RUN pip wheel --no-cache-dir --no-deps -w /wheels /build/watread

FROM ${JRE_IMAGE} AS jre

FROM ${AIRFLOW_IMAGE}
USER root
COPY --from=jre /opt/java/openjdk /opt/java/openjdk
RUN mkdir -p /opt/altlake/cache /opt/altlake/releases && chown -R airflow:0 /opt/altlake
USER airflow
# The whole pinned lock (the versions the tests ran), airflow included, so pip keeps the image's
# airflow and aligns everything else to it; then the C readers.
COPY --chown=airflow:0 requirements.txt /opt/altlake/requirements.txt
COPY --from=native /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir -r /opt/altlake/requirements.txt /tmp/wheels/*.whl
COPY --from=logstore --chown=airflow:0 /jars/ /opt/altlake/cache/jars/
WORKDIR /opt/altlake
COPY --chown=airflow:0 altlake/ altlake/
COPY --chown=airflow:0 altlake_cli/ altlake_cli/
COPY --chown=airflow:0 spark_jobs/ spark_jobs/
COPY --chown=airflow:0 gpu_workers/ gpu_workers/
COPY --chown=airflow:0 explore/ explore/
COPY --chown=airflow:0 plugins/ plugins/
COPY --chown=airflow:0 dags/ dags/
# `altlake` for people who exec into a container; tasks call `python -m altlake_cli.main` themselves.
RUN mkdir -p /home/airflow/.local/bin \
 && printf '#!/bin/sh\nexec python -m altlake_cli.main "$@"\n' > /home/airflow/.local/bin/altlake \
 && chmod 755 /home/airflow/.local/bin/altlake
ENV JAVA_HOME=/opt/java/openjdk \
    PYTHONPATH=/opt/altlake \
    ALTLAKE_CACHE_DIR=/opt/altlake/cache \
    ALTLAKE_AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/altlake/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/altlake/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
USER 50000
