# PostgreSQL 15 with the wal2json output plugin (pgoutput, the default, is built in) and the
# pubsubpull_context extension: the audit-context trigger and set_context in C (extension/), which
# `pubsubpull migrate` creates. Built from the repository root (see docker-compose.yml).
FROM postgres:15 AS extension
RUN apt-get update \
    && apt-get install -y --no-install-recommends make gcc libc6-dev postgresql-server-dev-15
COPY extension /extension
RUN make -C /extension with_llvm=no install DESTDIR=/out

FROM postgres:15
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15-wal2json \
    && rm -rf /var/lib/apt/lists/*
COPY --from=extension /out/ /
