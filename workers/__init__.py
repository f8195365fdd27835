"""Celery worker pools that run ONNX Runtime models for inference-jobs."""
