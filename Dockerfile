# schemagate: one static binary in an otherwise empty image.
#
#   docker build -t schemagate .
#   docker run --rm -e DATABASE_URL=postgres://... -v "$PWD/migrations:/migrations:ro" \
#       schemagate migrate --source /migrations
#
# To wrap a migrator that lives in your app image (Alembic, Django, Rails), copy the
# binary in instead:
#
#   COPY --from=schemagate /schemagate /usr/local/bin/schemagate
#   ENTRYPOINT ["schemagate", "migrate", "--version", "...", "--", "alembic", "upgrade", "head"]

FROM rust:1.95-slim-bookworm AS build
# musl-gcc compiles the C in SQLite and ring for the static target.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/build-static /out/schemagate

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="schemagate" \
      org.opencontainers.image.description="Apply schema migrations under a crash-safe database lock; gate apps on the schema version they were built for" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/schemagate"
COPY --from=build /out/schemagate /schemagate
# No shell, no CA bundle needed (webpki roots are compiled in), no root.
USER 65532:65532
ENTRYPOINT ["/schemagate"]
