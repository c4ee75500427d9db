# The `rose` binary in a small image. Build: docker build -t rose .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rose-cli

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates espeak-ng \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rose /usr/local/bin/rose
ENV ROSE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["rose"]
CMD ["serve"]
