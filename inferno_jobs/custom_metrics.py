"""Custom metrics: a tenant pushes a sample with ``POST /metrics/custom`` and ``GET /metrics`` exposes it as
``inferno_custom_<name>`` with a ``tenant`` label, like a Prometheus Pushgateway built into the API.

Samples live in Redis (``inferno_jobs/metrics.py`` keeps the built-in metrics the same way), so every API replica
exposes the same values. A metric's type and label names are fixed by its first sample; later samples of another
type or other label names are refused (409). A gauge is set to the value, a counter goes up by it (never down), a
histogram observes it in fixed buckets. The number of series (metric, tenant and label values) across the deployment
is capped by ``INFERNO_CUSTOM_METRICS_MAX_SERIES``: a new series beyond it is refused (400) while existing ones can
still be updated. Series are kept until an operator deletes the keys: like a Pushgateway, a value stays at what was
last pushed.
"""

from __future__ import annotations

import json
import re

import redis
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from inferno_jobs.errors import Conflict, InvalidRequest
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.metrics import Metrics, Spec

TYPES = ("gauge", "counter", "histogram")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # prometheus_client's defaults
MAX_LABELS = 8
MAX_LABEL_VALUE_CHARS = 128
MAX_NAME_CHARS = 100
RESERVED_LABELS = frozenset({"tenant", "le", "quantile"})  # ours, and the ones histograms and summaries use
_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SUFFIXES = ("_bucket", "_sum", "_count", "_created", "_info")  # would clash with the lines Prometheus derives

# KEYS: series set, values hash. ARGV: series member, cap, type, field, value, sum field (histograms).
# Returns {1 if the series is new, the stored value}, or {-1, series count} when a new series is over the cap.
_RECORD = """
local new = 0
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  local count = redis.call('SCARD', KEYS[1])
  if count >= tonumber(ARGV[2]) then return {-1, tostring(count)} end
  redis.call('SADD', KEYS[1], ARGV[1])
  new = 1
end
if ARGV[3] == 'gauge' then
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
  return {new, ARGV[5]}
elseif ARGV[3] == 'counter' then
  return {new, redis.call('HINCRBYFLOAT', KEYS[2], ARGV[4], ARGV[5])}
end
redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
return {new, redis.call('HINCRBYFLOAT', KEYS[2], ARGV[6], ARGV[5])}
"""


class CustomMetricRequest(Schema):
    """``{"name", "value", "type"?: gauge | counter | histogram, "labels"?: {...}, "help"?}``."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=[
        validate.Length(1, MAX_NAME_CHARS),
        validate.Regexp(_METRIC_NAME, error="name must match [a-zA-Z_][a-zA-Z0-9_]* (a Prometheus metric name)")])
    value = fields.Float(required=True, allow_nan=False)
    type = fields.String(load_default="gauge", validate=validate.OneOf(TYPES))
    labels = fields.Dict(keys=fields.String(), values=fields.String(validate=validate.Length(
        max=MAX_LABEL_VALUE_CHARS)), load_default=dict, validate=validate.Length(
        max=MAX_LABELS, error=f"at most {MAX_LABELS} labels"))
    help = fields.String(load_default="", validate=validate.Length(max=200))

    @validates_schema(skip_on_field_errors=True)
    def _check(self, data, **kwargs):
        if data["type"] == "counter" and data["value"] < 0:
            raise ValidationError("a counter only goes up: value (the increment) must be >= 0", "value")
        name = data["name"]
        if name.endswith(_SUFFIXES) or (data["type"] != "counter" and name.endswith("_total")):
            raise ValidationError(f"name must not end with {', '.join(_SUFFIXES)} (or _total but for a counter)",
                                  "name")
        for label in data["labels"]:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValidationError(f"label {label!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, "
                                      "not starting with __)", "labels")
            if label in RESERVED_LABELS:
                raise ValidationError(f"label {label!r} is reserved" + (
                    ": inferno-jobs sets tenant from the API key" if label == "tenant" else ""), "labels")

    @post_load
    def _canonical(self, data, **kwargs):
        if data["type"] == "counter" and data["name"].endswith("_total"):
            data["name"] = data["name"][:-len("_total")]  # exposed as inferno_custom_<name>_total
        return data


class CustomMetricSample(Schema):
    """The stored sample: the series as ``GET /metrics`` exposes it and its value now."""

    name = fields.String()
    metric = fields.String()
    type = fields.String()
    labels = fields.Dict(keys=fields.String(), values=fields.String())
    value = fields.Float()
    count = fields.Integer()
    created = fields.Boolean()


def exposed_name(name: str, metric_type: str) -> str:
    """The metric family's name on ``GET /metrics``."""
    return f"inferno_custom_{name}" + ("_total" if metric_type == "counter" else "")


def _spec(name: str, definition: dict) -> Spec:
    return Spec(f"custom_{name}", definition["help"], ("tenant", *definition["labels"]),
                BUCKETS if definition["type"] == "histogram" else ())


def _field(values) -> str:
    return json.dumps([str(v) for v in values], separators=(",", ":"))


class CustomMetrics:
    """Records and reads the custom metrics of one deployment."""

    def __init__(self, client: redis.Redis, keys: Keyspace, max_series: int):
        self.redis = client
        self.keys = keys
        self.max_series = max_series
        self._record = client.register_script(_RECORD)

    def define(self, sample: dict) -> dict:
        """The metric's definition: the first sample's type, help and label names, which later samples must keep.

        Raises :class:`Conflict` for a sample of another type or with other label names.
        """
        wanted = {"type": sample["type"], "help": sample["help"] or f"custom metric {sample['name']}",
                  "labels": sorted(sample["labels"])}
        key = self.keys.custom_metrics()
        if self.redis.hsetnx(key, sample["name"], json.dumps(wanted)):
            return wanted
        definition = json.loads(self.redis.hget(key, sample["name"]))
        if definition["type"] != wanted["type"] or definition["labels"] != wanted["labels"]:
            raise Conflict(f"custom metric {sample['name']!r} is a {definition['type']} with labels "
                           f"{definition['labels']}; a sample must keep its type and label names",
                           details={"field": "name", "type": definition["type"], "labels": definition["labels"]})
        return definition

    def record(self, sample: dict, tenant: str) -> dict:
        """Store one validated sample (:class:`CustomMetricRequest`) of ``tenant``; returns the series now.

        Raises :class:`InvalidRequest` when it would start a series beyond the cap.
        """
        definition = self.define(sample)
        label_values = [tenant, *(sample["labels"][name] for name in definition["labels"])]
        spec = _spec(sample["name"], definition)
        if definition["type"] == "histogram":
            bucket = next((str(b) for b in BUCKETS if sample["value"] <= b), "+Inf")
            field, sum_field = _field((*label_values, bucket)), _field((*label_values, "_sum"))
        else:
            field, sum_field = _field(label_values), ""
        member = f"{sample['name']}\n{_field(label_values)}"
        try:
            new, stored = self._record(keys=[self.keys.custom_series(), self.keys.metric(spec.name)],
                                       args=[member, self.max_series, definition["type"], field,
                                             repr(sample["value"]), sum_field])
        except redis.ResponseError as exc:  # HINCRBYFLOAT refuses a total that is no longer a finite number
            raise InvalidRequest(f"custom metric {sample['name']!r} cannot take this value: {exc}",
                                 details={"field": "value"}) from exc
        if int(new) < 0:
            raise InvalidRequest(
                f"there are {int(stored)} custom metric series, the most INFERNO_CUSTOM_METRICS_MAX_SERIES allows: "
                "this sample would start a new one (existing series can still be updated)",
                details={"field": "labels", "max_series": self.max_series})
        out = {"name": sample["name"], "metric": exposed_name(sample["name"], definition["type"]),
               "type": definition["type"], "labels": dict(zip(("tenant", *definition["labels"]), label_values)),
               "value": float(stored), "created": bool(new)}
        if definition["type"] == "histogram":
            buckets, total = Metrics(self.redis, self.keys).histogram(spec).get(tuple(label_values), ([], 0.0))
            out["count"], out["value"] = int(buckets[-1][1]) if buckets else 0, total
        return out

    def definitions(self) -> dict[str, dict]:
        """Every custom metric: name -> definition."""
        raw = self.redis.hgetall(self.keys.custom_metrics())
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in sorted(raw.items())}

    def collect(self):
        """The ``prometheus_client`` metric families of every custom metric, for ``GET /metrics``."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        metrics = Metrics(self.redis, self.keys)
        for name, definition in self.definitions().items():
            spec = _spec(name, definition)
            family_name, labels = f"inferno_custom_{name}", list(spec.labels)
            if definition["type"] == "histogram":
                family = HistogramMetricFamily(family_name, spec.help, labels=labels)
                for label_values, (buckets, total) in sorted(metrics.histogram(spec).items()):
                    family.add_metric(list(label_values), buckets, total)
            else:
                cls = CounterMetricFamily if definition["type"] == "counter" else GaugeMetricFamily
                family = cls(family_name, spec.help, labels=labels)
                for label_values, value in sorted(metrics.counter(spec).items()):
                    family.add_metric(list(label_values), value)
            yield family
