"""Typed request and response schemas of the HTTP API (pydantic v2).

flask-openapi3 validates path, query and JSON body parameters against the request models
and generates the OpenAPI 3.1 document (/v1/openapi.json) from all of them; nothing in the
document is written by hand. Request models refuse properties they do not declare
(``additionalProperties: false``); response models describe what the service sends and allow
clients to ignore members added later.

Limits live here, next to the fields: ids are SQLite rowids (1 .. 2**63-1), names are at most
128 characters, ``n`` of the queue 1 .. ``MAX_QUEUE_N`` (200).
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from edge_al import acquisition

__all__ = [
    "ID_MAX",
    "Activated",
    "ActiveManifest",
    "AnnotationItem",
    "AnnotationsRequest",
    "AnnotationsResult",
    "BoxStatus",
    "Decision",
    "Headline",
    "Health",
    "ImageQuery",
    "Job",
    "JobCreate",
    "JobList",
    "JobPath",
    "JobsQuery",
    "LabelCreate",
    "Labels",
    "ModelFile",
    "ModelFilePath",
    "ModelVersion",
    "Models",
    "Problem",
    "Queue",
    "QueueItem",
    "QueueQuery",
    "Ready",
    "Sample",
    "SamplePath",
    "SamplesCreated",
    "ScoreQuery",
    "ScoreResponse",
    "Stats",
    "UndoRequest",
    "UndoResult",
    "VersionPath",
]

ID_MAX = 2**63 - 1  # SQLite's INTEGER PRIMARY KEY range
NAME_MAX = 128
QUEUE_N_MAX = 200  # the default MAX_QUEUE_N

Id = Annotated[int, Field(ge=1, le=ID_MAX, description=f"1 .. {ID_MAX} (a SQLite rowid)")]
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
# Text the store keeps (annotator and label names): PostgreSQL's text refuses NUL, so the schema does too.
NO_NUL = r"^[^\x00]*$"
Time = Annotated[float, Field(description="Unix time, seconds")]
Action = Literal["accept", "correct", "reject"]
Strategy = Literal[acquisition.STRATEGIES]  # type: ignore[valid-type]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class _Request(BaseModel):
    """Path and query parameters: text converted to the declared type; unknown names refused."""

    model_config = ConfigDict(extra="forbid")


class _Body(BaseModel):
    """JSON bodies: the JSON types the schema names (no "1" for 1, no true for 1); unknown properties
    refused. An integral number such as 7.0 is an integer, as JSON Schema has it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: int(v) if isinstance(v, float) and v.is_integer() and abs(v) <= ID_MAX else v for k, v in data.items()}


def _sample_or_path(schema: dict[str, Any]) -> None:
    """An item names its sample by id or by path: one of the two is required, and neither is null."""
    for key in ("sample_id", "path"):
        prop = schema["properties"][key]
        prop.update(next(s for s in prop.pop("anyOf") if s.get("type") != "null"))
    schema["anyOf"] = [{"required": ["sample_id"]}, {"required": ["path"]}]


class _Query(BaseModel):
    """Query parameters (unknown names ignored). flask-openapi3 asks for the model's JSON schema on
    every request (about 0.3 ms); it is computed once here and copied out."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _SCHEMA_CACHE:
            _SCHEMA_CACHE[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(_SCHEMA_CACHE[key])


_SCHEMA_CACHE: dict[Any, dict[str, Any]] = {}


# -- errors -----------------------------------------------------------------------------------
class ProblemItem(BaseModel):
    """One item of a request that failed (an image, an annotation, a field)."""

    index: int | None = Field(None, description="the item's position in the request")
    status: int | None = Field(None, description="this item's status (409: leased to another annotator; 422: malformed)")
    filename: str | None = None
    field: str | None = Field(None, description="where in the request, e.g. body.sample_id or query.n")
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details: every error of the service, as application/problem+json."""

    type: str
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = None
    errors: list[ProblemItem] | None = None


# -- parameters -------------------------------------------------------------------------------
class SamplePath(_Request):
    sample_id: Id


class JobPath(_Request):
    job_id: Id


class VersionPath(_Request):
    version: str = Field(max_length=32, pattern=r"^v[0-9]{4,}$", description="a version name such as v0003")


class ModelFilePath(_Request):
    version: str = Field(max_length=32, pattern=r"^v[0-9]{4,}$", description="a version name such as v0003")
    name: Literal["model.xml", "model.bin", "meta.json"] = Field(description="one of the files a line runs")


class ScoreQuery(_Query):
    store: bool = Field(False, description="also add the images to the pool (deduplicated)")
    top_k: int = Field(3, ge=1, le=1000, description="how many classes in top_k")
    filename: str = Field("", max_length=255, description="a name for a raw-body image")


class ImageQuery(_Query):
    size: int = Field(0, ge=0, le=4096, description="0: the original bytes; else a JPEG thumbnail at most this many pixels wide and high")


class QueueQuery(_Query):
    n: int = Field(20, ge=1, le=QUEUE_N_MAX, description="how many")
    strategy: Strategy = Field(acquisition.DEFAULT_STRATEGY)
    annotator: str = Field("", max_length=NAME_MAX, pattern=NO_NUL, description="lease holder (default: the key's name)")


class LabelExamplesQuery(_Query):
    label: str = Field(
        min_length=1, max_length=NAME_MAX, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$", description="the class whose labeled examples to show"
    )
    n: int = Field(6, ge=1, le=24, description="how many")


class JobsQuery(_Query):
    limit: int = Field(50, ge=1, le=1000)


# -- request bodies ---------------------------------------------------------------------------
class AnnotationItem(_Body):
    model_config = ConfigDict(json_schema_extra=_sample_or_path)

    sample_id: Id | None = Field(None, description="the sample (or give path)")
    path: str | None = Field(
        None, min_length=1, max_length=4096, pattern=NO_NUL, description="the sample's path as ingested (instead of sample_id)"
    )
    action: Action
    label: str | None = Field(
        None, max_length=NAME_MAX, pattern=NO_NUL, description="needed for correct; accept defaults to the model's guess"
    )
    annotator: str | None = Field(None, max_length=NAME_MAX, pattern=NO_NUL, description="default: the key's name")


AnnotationItems = Annotated[list[AnnotationItem], Field(max_length=1000, description="at most MAX_ANNOTATIONS_PER_REQUEST (1000)")]


class AnnotationsEnvelope(_Body):
    annotations: AnnotationItems


class AnnotationsRequest(RootModel[AnnotationsEnvelope | AnnotationItems | AnnotationItem]):
    """A batch (``{"annotations": [...]}``), a bare list, or one item. Each item is validated on its
    own: valid items are committed even when others are refused (listed in the 422 problem)."""


class UndoRequest(_Body):
    sample_id: Id
    annotator: str | None = Field(None, max_length=NAME_MAX, pattern=NO_NUL)


class LabelCreate(_Body):
    # the store's rule: printable (no control characters), not blank, at most 128 characters
    name: Name = Field(pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$")


class ScoreParams(_Body):
    device: str | None = Field(None, max_length=64, description="CPU, GPU or AUTO (default: the service's)")
    batch: int | None = Field(None, ge=1, le=256)
    limit: int | None = Field(None, ge=1, le=ID_MAX, description="score at most this many samples")


class RetrainParams(_Body):
    train_options: dict[str, Any] | None = None
    export_options: dict[str, Any] | None = None
    tolerance: float | None = Field(None, ge=0, le=1)
    device: str | None = Field(None, max_length=64)
    batch: int | None = Field(None, ge=1, le=256)
    rescore: bool | None = None


class ScoreJob(_Body):
    kind: Literal["score"]
    params: ScoreParams | None = None


class RetrainJob(_Body):
    kind: Literal["retrain"]
    params: RetrainParams | None = None


class JobCreate(RootModel[Annotated[ScoreJob | RetrainJob, Field(discriminator="kind")]]):
    """A job to queue; null parameters mean the defaults."""


# -- responses --------------------------------------------------------------------------------
class Scores(BaseModel):
    """Acquisition scores: higher = more informative; fre/knn need a labeled reference (else null)."""

    entropy: float | None
    margin: float | None
    least_confidence: float | None
    fre: float | None = None
    knn: float | None = None


class TopK(BaseModel):
    label: str
    probability: float


class ScoreResult(BaseModel):
    filename: str
    label: str
    confidence: float = Field(ge=0, le=1)
    top_k: list[TopK]
    scores: Scores
    model_version: str = Field(description="the version that produced this result")
    sample_id: int | None = Field(None, description="with ?store=true: the pool sample (deduplicated)")
    created: bool | None = Field(None, description="with ?store=true: false when the image was already in the pool")
    queued: bool | None = Field(
        None,
        description="with ?store=true on a scoring box: true once the image is on the box's disk, "
        "on its way to the central pool; false when the outbox is full (detail says why)",
    )
    sha256: str | None = Field(None, description="with ?store=true on a scoring box: the queued image's SHA-256")


class ModelFile(BaseModel):
    name: str
    size: int = Field(ge=0, description="bytes")
    sha256: str = Field(description="hex SHA-256 of the file: a scoring box checks every download against it")


class ActiveManifest(BaseModel):
    """What a scoring box follows: the active version and its line files (GET /v1/models/<version>/files/<name>)."""

    version: str | None = Field(description="the active version; null while none is")
    files: list[ModelFile]


class ScoreResponse(BaseModel):
    model_version: str | None
    results: list[ScoreResult]
    detail: str | None = Field(None, description="on a scoring box: why some images were not queued")


class BoxStatus(BaseModel):
    """A scoring box's state: the version it serves, the central side as last seen, its outbox."""

    serving: str | None
    ready: bool
    local_active: str | None = Field(description="the active version of the box's own registry")
    central: dict[str, Any] = Field(description="reachable, central_version, last_ok_at, last_error, last_swap_at, poll_s")
    outbox: dict[str, Any] | None = Field(
        description="pending, pending_bytes, max_bytes, delivered, duplicates, rejected, "
        "last_ok_at, last_error, backoff_s; null when the box sends nothing"
    )


class SampleCreated(BaseModel):
    id: int
    sha256: str
    created: bool = Field(description="false: a duplicate of an existing sample")
    filename: str | None = None


class SamplesCreated(BaseModel):
    samples: list[SampleCreated]


class Decision(BaseModel):
    action: Literal["accept", "correct", "reject", "undo"]
    label: str | None
    annotator: str
    created_at: Time


class Prediction(BaseModel):
    model_version: str
    label: str
    confidence: float
    probs: dict[str, float]
    scores: dict[str, float] | None = None


class Sample(BaseModel):
    id: int
    sha256: str
    width: int
    height: int
    source: str
    created_at: Time
    image_url: str | None = None
    annotation: Decision | None = Field(description="the standing decision")
    history: list[Decision] | None = None
    prediction: Prediction | None


class PickReason(BaseModel):
    """Why the sample was picked, for people (``edge_al.selection``)."""

    code: str = Field(description="the most telling of codes")
    codes: list[str] = Field(description="every reason that applies: uncertain, rare-class, novel, typical, random, ...")
    text: str


class QueueItem(BaseModel):
    sample_id: int
    image_url: str
    predicted: str
    confidence: float
    probs: dict[str, float]
    score: float | None = None
    scores: dict[str, float | None]
    reason: PickReason | None = None
    lease_expires_at: Time


class Queue(BaseModel):
    model_version: str | None = Field(description="null before the first model: a cold start over the embedded pool, predicted ''")
    strategy: Strategy
    holder: str | None = Field(None, description="who holds the leases: the key's annotator (an admin may name another)")
    lease_seconds: int
    lease_limit: int | None = Field(None, description="most live leases one annotator may hold (MAX_LEASES_PER_KEY)")
    leases_held: int | None = Field(None, description="live leases the holder holds after this call")
    labels: list[str]
    items: list[QueueItem]


class Job(BaseModel):
    id: int | str
    kind: str
    state: JobState
    progress: float | None = Field(None, ge=0, le=1)
    message: str | None = None
    log_tail: list[str] | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None


class JobList(BaseModel):
    jobs: list[Job]


class AnnotationsResult(BaseModel):
    written: int
    unchanged: int = Field(description="repeats of the annotator's standing decision")
    annotations_since_model: int
    retrain_after: int
    retrain_job: Job | None


class UndoResult(BaseModel):
    undone: bool
    sample_id: int | None = None


class LabelExample(BaseModel):
    sample_id: int
    image_url: str


class LabelExamples(BaseModel):
    label: str
    items: list[LabelExample] = Field(description="samples whose standing decision is the label, newest first")


class Labels(BaseModel):
    labels: list[str]
    created: bool | None = None


class Headline(BaseModel):
    accuracy: float | None
    balanced_accuracy: float | None


class ModelVersion(BaseModel):
    version: str
    active: bool
    precision: str | None
    arch: str | None = None
    labels: list[str] | None = None
    metrics: dict[str, Any] = Field(description="as export recorded them")
    headline: Headline | None = None
    num_train_labels: int | None
    fallback: bool | None = None
    created_at: float | None


class Models(BaseModel):
    active: str | None
    serving: str | None = Field(None, description="the version the scorer has loaded")
    versions: list[ModelVersion]


class Activated(BaseModel):
    active: str
    serving: str | None = None
    reloaded: bool | None = None
    rescore_job: Job | None = None


class Validation(BaseModel):
    """How far a version's validation figures can be trusted (``edge_al.figures``)."""

    n: int | None
    trusted: bool
    note: str | None


class ActiveModel(BaseModel):
    version: str
    validation: Validation | None = None


class StatsModel(BaseModel):
    version: str
    active: bool
    num_train_labels: int | None
    precision: str | None = None
    metrics: Headline
    created_at: float | None
    promoted: bool | None = Field(None, description="on the promotion path (never promoted, or rolled back: false)")
    validation: Validation | None = None


class Stats(BaseModel):
    pool_size: int
    labeled: int
    unlabeled: int
    rejected: int
    labels: list[str] | None = None
    labeled_per_class: dict[str, int]
    unlabeled_predicted_per_class: dict[str, int] | None = None
    annotations_since_model: int
    retrain_after: int
    serving: str | None = None
    scored_by_active: int | None = None
    active_model: ActiveModel | None
    retrain_job: Job | None
    models: list[StatsModel] = Field(description="the learning curve: each version, its metrics and the labels it was trained on")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    model_version: str


class Document(RootModel[dict[str, Any]]):
    """An OpenAPI 3.1 document."""
