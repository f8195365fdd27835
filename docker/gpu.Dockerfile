# The gpu worker image: CUDA 12 + cuDNN 9 runtime and onnxruntime-gpu ('.[gpu]').
# One worker process per GPU: `inferno-jobs worker --pool gpu --gpus 0,1`.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MODEL_DIR=/models \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY setup.py setup.cfg README.md ./
COPY inferno_jobs inferno_jobs
COPY api api
COPY workers workers
RUN pip install '.[gpu]' \
    && useradd --uid 10001 --create-home inferno && mkdir -p /models && chown inferno /models
USER 10001
CMD ["inferno-jobs", "worker", "--pool", "gpu", "--gpus", "0"]
