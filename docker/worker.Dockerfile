# The cpu worker image (also Flower and the webhooks pool): ONNX Runtime on CPU.
# EXTRAS=worker,build makes the models image (scikit-learn, skl2onnx, CPU torch) that runs `models build-demo`.
FROM python:3.11-slim
ARG EXTRAS=worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MODEL_DIR=/models
WORKDIR /app
COPY setup.py setup.cfg README.md ./
COPY inferno_jobs inferno_jobs
COPY api api
COPY workers workers
# The CPU build of torch first (as the Makefile does), so that the build extra does not pull a CUDA one.
RUN case ",$EXTRAS," in *,build,*) pip install torch --index-url https://download.pytorch.org/whl/cpu ;; esac \
    && pip install ".[$EXTRAS]" \
    && useradd --uid 10001 --create-home inferno && mkdir -p /models && chown inferno /models
USER 10001
CMD ["inferno-jobs", "worker", "--pool", "cpu"]
