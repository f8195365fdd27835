# The API image: Flask + gunicorn, no ONNX Runtime (the API sends tasks by name and never loads a model).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MODEL_DIR=/models API_HOST=0.0.0.0
WORKDIR /app
COPY setup.py setup.cfg README.md ./
COPY inferno_jobs inferno_jobs
COPY api api
COPY workers workers
RUN pip install '.[api]' \
    && ! python -c "import onnxruntime" 2>/dev/null \
    && useradd --uid 10001 --create-home inferno && mkdir -p /models && chown inferno /models
USER 10001
EXPOSE 8000
CMD ["inferno-jobs", "api"]
