# One image for every `online` process (serve, consume, train); the command picks the part.
#   docker build -t online .                                                        # CPU torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t online:cuda .   # GPU trainer
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
# torch first, from TORCH_INDEX (the CPU build by default), so the range in pyproject.toml pulls nothing more.
RUN pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX"
COPY pyproject.toml README.md constraints.txt ./
COPY online online
COPY consumers consumers
COPY services services
COPY bench bench
# Every other dependency at the versions the test suite passed with (constraints.txt), not "latest"; the s3
# extra (boto3) for ONLINE_MODEL_STORE=s3://bucket/prefix.
RUN pip install --no-cache-dir -c constraints.txt '.[s3]'
# A fixed numeric user (Kubernetes' runAsNonRoot can verify it). /state is created and owned by it here, so
# a named volume mounted there starts owned by it too (Docker copies the image directory's ownership into
# an empty volume); /data is where seed data is mounted (read-only).
RUN groupadd --gid 10001 online \
    && useradd --uid 10001 --gid 10001 --create-home online \
    && mkdir -p /state /data \
    && chown online:online /state
USER 10001:10001
# Caches of libraries (Hugging Face, XDG) go to the state volume, never to the image's read-only layers.
ENV ONLINE_STATE_DIR=/state ONLINE_API_HOST=0.0.0.0 ONLINE_DATA_DIR=/data/clinc150 \
    HF_HOME=/state/.cache/huggingface XDG_CACHE_HOME=/state/.cache PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["online"]
