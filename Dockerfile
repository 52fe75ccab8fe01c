# One image for every `online` process (serve, consume, train); the command picks the part.
FROM python:3.11-slim
WORKDIR /app
# The CPU build of torch first, so the range in pyproject.toml pulls no CUDA packages.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md constraints.txt ./
COPY online online
COPY consumers consumers
COPY services services
COPY bench bench
# Every other dependency at the versions the test suite passed with (constraints.txt), not "latest".
RUN pip install --no-cache-dir -c constraints.txt . && useradd --create-home online && mkdir -p /state && chown online /state
USER online
ENV ONLINE_STATE_DIR=/state ONLINE_API_HOST=0.0.0.0 ONLINE_DATA_DIR=/data/clinc150
ENTRYPOINT ["online"]
