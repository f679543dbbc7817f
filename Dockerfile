# One image for every role (worker, producer CLI, Flower). CPU torch by default; for GPU workers
# build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 (any CUDA 12 index).
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0
COPY pyproject.toml README.md ./
COPY sa2va_queue sa2va_queue
COPY worker worker
COPY producer producer
COPY db db
RUN pip install .
RUN useradd --create-home app && mkdir -p /data && chown app /data
USER app
ENV SA2VA_DATA_DIR=/data
ENTRYPOINT ["sa2va-queue"]
