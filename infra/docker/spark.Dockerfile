# altlake's Spark: one image for the standalone master, its workers and the spark-submit client,
# with spark_jobs/ and the packages its drivers and executors import (spark-requirements.txt), the
# C WAT readers of native/, the Delta / hadoop-aws jars and our DynamoDB log store. pyspark's wheel
# is the Spark distribution (bin/spark-class, bin/spark-submit): master, worker and driver run one version.
#
#   docker build -f infra/docker/spark.Dockerfile -t altlake-spark:0.1.0 .
#   docker run --rm altlake-spark:0.1.0 spark-class org.apache.spark.deploy.master.Master --host 0.0.0.0
#   docker run --rm altlake-spark:0.1.0 spark-class org.apache.spark.deploy.worker.Worker spark://spark-master:7077
#   docker run --rm -e ALTLAKE_LAKE_DIR=s3a://altlake/lake -e ALTLAKE_S3_ENDPOINT=http://s3:9000 altlake-spark:0.1.0 \
#       spark-submit --master spark://spark-master:7077 spark_jobs/extract.py --help
#
# Python lives at /usr/local/bin/python, as in the official Airflow image: a driver names its own
# interpreter as the executors' (spark.pyspark.python in spark_jobs/session.py), so executors here
# must find python 3.11 at that path; /home/airflow/.local/bin/python points there too, for an
# Airflow image whose interpreter is its user environment's.
# Base images are pinned by tag; to pin by digest as well, append @sha256:<digest> to a tag
# (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints it), e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> ...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILD_PYTHON_IMAGE=python:3.11-slim-bookworm
ARG MAVEN_IMAGE=maven:3.9.11-eclipse-temurin-17
ARG JRE_IMAGE=eclipse-temurin:17-jre-jammy

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

FROM ${PYTHON_IMAGE} AS native
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY native/watread/ /build/watread/
RUN pip wheel --no-cache-dir --no-deps -w /wheels /build/watread

FROM ${JRE_IMAGE} AS jre

FROM ${PYTHON_IMAGE}
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
COPY --from=jre /opt/java/openjdk /opt/java/openjdk
# procps: Spark's launch scripts call ps; tini reaps the JVM's children and forwards signals.
RUN apt-get update && apt-get install -y --no-install-recommends procps tini && rm -rf /var/lib/apt/lists/*
COPY infra/docker/spark-requirements.txt /tmp/spark-requirements.txt
COPY --from=native /wheels/ /tmp/wheels/
RUN uv pip install --system --no-cache -r /tmp/spark-requirements.txt /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels /tmp/spark-requirements.txt \
 && mkdir -p /home/airflow/.local/bin && ln -s /usr/local/bin/python /home/airflow/.local/bin/python
WORKDIR /opt/altlake
COPY --from=logstore /jars/ /opt/altlake/cache/jars/
COPY altlake/ altlake/
COPY altlake_cli/ altlake_cli/
COPY spark_jobs/ spark_jobs/
COPY explore/ explore/
RUN useradd --create-home --uid 10001 altlake && mkdir -p /opt/altlake/work && chown -R altlake /opt/altlake
USER 10001
ENV JAVA_HOME=/opt/java/openjdk \
    PYTHONPATH=/opt/altlake \
    PYTHONUNBUFFERED=1 \
    ALTLAKE_CACHE_DIR=/opt/altlake/cache \
    SPARK_WORKER_DIR=/opt/altlake/work \
    SPARK_NO_DAEMONIZE=1 \
    PATH=/usr/local/lib/python3.11/site-packages/pyspark/bin:$PATH
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["spark-submit", "--help"]
