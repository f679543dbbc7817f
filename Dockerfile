# One image for every role (worker, producer CLI, Flower, PACS listener), in two variants:
#   docker build -t sa2va-queue .                                  # CPU torch (vesselness, noop, tests)
#   docker build -t sa2va-queue:cuda --build-arg TORCH_VARIANT=cuda .   # CUDA torch for GPU workers
# Layers, slowest-changing first: torch, then the dependencies read from pyproject.toml, then our
# sources (installed with --no-deps), so a code change rebuilds only the last, small layer.
# mmengine (training configs for `convert`) is an optional extra and stays out: it pulls the
# non-headless opencv-python and its X11 libraries. Build with --build-arg EXTRAS=convert to add it.
ARG TORCH_VARIANT=cpu

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 app && mkdir -p /data /input && chown app /data /input
WORKDIR /app

FROM base AS torch-cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The CUDA wheels carry their own CUDA runtime libraries: the host needs only the NVIDIA driver and
# the container toolkit (compose reserves the GPUs), not a CUDA base image.
FROM base AS torch-cuda
ARG CUDA_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "$CUDA_INDEX" torch==2.13.0

FROM torch-${TORCH_VARIANT} AS runtime
ARG EXTRAS=""
# Dependency layer: only pyproject.toml is copied, so this layer is reused until it changes.
COPY pyproject.toml ./
RUN python -c "import tomllib, sys; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in sys.argv[1].split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" \
        "$EXTRAS" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# Sources last.
COPY README.md ./
COPY sa2va_queue sa2va_queue
COPY db db
COPY producer producer
COPY worker worker
RUN pip install --no-deps . && sa2va-queue --version
USER app
ENV SA2VA_DATA_DIR=/data
ENTRYPOINT ["sa2va-queue"]
CMD ["--help"]
