from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
FINISH_REASON_CHOICE: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_UNSPECIFIED: FinishReason
JOB_KIND_EVALUATE: JobKind
JOB_KIND_TRAIN: JobKind
JOB_KIND_UNSPECIFIED: JobKind
JOB_STATE_CANCELLED: JobState
JOB_STATE_CANCELLING: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_UNSPECIFIED: JobState
VIRTUAL_PROMPT_STYLE_PROMPT_TUNING: VirtualPromptStyle
VIRTUAL_PROMPT_STYLE_P_TUNING: VirtualPromptStyle
VIRTUAL_PROMPT_STYLE_UNSPECIFIED: VirtualPromptStyle

class CancelJobRequest(_message.Message):
    __slots__ = ["job_id"]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ChoiceScore(_message.Message):
    __slots__ = ["logprob", "logprob_per_token", "probability", "text", "token_ids"]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    logprob: float
    logprob_per_token: float
    probability: float
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., logprob: _Optional[float] = ..., logprob_per_token: _Optional[float] = ..., probability: _Optional[float] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ["choices", "finish_reason", "logprobs", "prompt_tokens", "task_version", "text", "token_ids"]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    choices: _containers.RepeatedCompositeFieldContainer[ChoiceScore]
    finish_reason: FinishReason
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    prompt_tokens: int
    task_version: int
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ..., prompt_tokens: _Optional[int] = ..., task_version: _Optional[int] = ..., choices: _Optional[_Iterable[_Union[ChoiceScore, _Mapping]]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ["files", "records"]
    FILES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedScalarFieldContainer[str]
    records: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, files: _Optional[_Iterable[str]] = ..., records: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class DeleteTaskRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteTaskResponse(_message.Message):
    __slots__ = ["name", "versions_deleted"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions_deleted: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., versions_deleted: _Optional[_Iterable[int]] = ...) -> None: ...

class EarlyStopping(_message.Message):
    __slots__ = ["enabled", "min_delta", "mode", "monitor", "patience"]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    min_delta: float
    mode: str
    monitor: str
    patience: int
    def __init__(self, enabled: bool = ..., monitor: _Optional[str] = ..., mode: _Optional[str] = ..., patience: _Optional[int] = ..., min_delta: _Optional[float] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ["data", "labels", "max_new_tokens", "metric", "request_id", "squad_gold", "task", "version"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SQUAD_GOLD_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    data: Dataset
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_new_tokens: int
    metric: str
    request_id: str
    squad_gold: str
    task: str
    version: int
    def __init__(self, task: _Optional[str] = ..., version: _Optional[int] = ..., data: _Optional[_Union[Dataset, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., metric: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., request_id: _Optional[str] = ..., squad_gold: _Optional[str] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ["confusion", "created_at", "dataset", "examples", "id", "labels", "metrics"]
    class MetricsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class Row(_message.Message):
        __slots__ = ["predicted"]
        PREDICTED_FIELD_NUMBER: _ClassVar[int]
        predicted: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, predicted: _Optional[_Iterable[int]] = ...) -> None: ...
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    confusion: _containers.RepeatedCompositeFieldContainer[Evaluation.Row]
    created_at: _timestamp_pb2.Timestamp
    dataset: str
    examples: int
    id: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., dataset: _Optional[str] = ..., examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Iterable[str]] = ..., confusion: _Optional[_Iterable[_Union[Evaluation.Row, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ["job_id"]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ["name", "version"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class InferBatchRequest(_message.Message):
    __slots__ = ["requests"]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[InferRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[InferRequest, _Mapping]]] = ...) -> None: ...

class InferBatchResponse(_message.Message):
    __slots__ = ["results"]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[InferResult]
    def __init__(self, results: _Optional[_Iterable[_Union[InferResult, _Mapping]]] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ["allowed", "choices", "fields", "max_new_tokens", "min_new_tokens", "repetition_penalty", "return_logprobs", "sampling", "stop", "task", "version"]
    class FieldsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    allowed: _containers.RepeatedScalarFieldContainer[str]
    choices: _containers.RepeatedScalarFieldContainer[str]
    fields: _containers.ScalarMap[str, str]
    max_new_tokens: int
    min_new_tokens: int
    repetition_penalty: float
    return_logprobs: bool
    sampling: Sampling
    stop: _containers.RepeatedScalarFieldContainer[str]
    task: str
    version: int
    def __init__(self, task: _Optional[str] = ..., version: _Optional[int] = ..., fields: _Optional[_Mapping[str, str]] = ..., max_new_tokens: _Optional[int] = ..., min_new_tokens: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., repetition_penalty: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., return_logprobs: bool = ..., choices: _Optional[_Iterable[str]] = ..., allowed: _Optional[_Iterable[str]] = ...) -> None: ...

class InferResult(_message.Message):
    __slots__ = ["completion", "error"]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    completion: Completion
    error: ItemError
    def __init__(self, completion: _Optional[_Union[Completion, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class InferStreamEvent(_message.Message):
    __slots__ = ["done", "token"]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    done: Completion
    token: TokenLogprob
    def __init__(self, token: _Optional[_Union[TokenLogprob, _Mapping]] = ..., done: _Optional[_Union[Completion, _Mapping]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ["code", "message"]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ["created_at", "dropped_examples", "epoch", "error", "finished_at", "job_id", "kind", "last_sequence", "skipped_records", "started_at", "state", "step", "tasks", "total_epochs", "total_steps", "written"]
    class DroppedExamplesEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    created_at: _timestamp_pb2.Timestamp
    dropped_examples: _containers.ScalarMap[str, int]
    epoch: int
    error: str
    finished_at: _timestamp_pb2.Timestamp
    job_id: str
    kind: JobKind
    last_sequence: int
    skipped_records: int
    started_at: _timestamp_pb2.Timestamp
    state: JobState
    step: int
    tasks: _containers.RepeatedScalarFieldContainer[str]
    total_epochs: int
    total_steps: int
    written: _containers.RepeatedCompositeFieldContainer[TaskVersion]
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., tasks: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., last_sequence: _Optional[int] = ..., error: _Optional[str] = ..., written: _Optional[_Iterable[_Union[TaskVersion, _Mapping]]] = ..., epoch: _Optional[int] = ..., total_epochs: _Optional[int] = ..., dropped_examples: _Optional[_Mapping[str, int]] = ..., skipped_records: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ["page_size", "page_token"]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ["jobs", "next_page_token"]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ["page_size", "page_token"]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ["next_page_token", "tasks"]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    next_page_token: str
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Optimizer(_message.Message):
    __slots__ = ["betas", "eps", "gradient_clip_val", "lr", "name", "sched", "weight_decay"]
    BETAS_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CLIP_VAL_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    betas: _containers.RepeatedScalarFieldContainer[float]
    eps: float
    gradient_clip_val: float
    lr: float
    name: str
    sched: Schedule
    weight_decay: float
    def __init__(self, name: _Optional[str] = ..., lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., betas: _Optional[_Iterable[float]] = ..., eps: _Optional[float] = ..., gradient_clip_val: _Optional[float] = ..., sched: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class PTuningOptions(_message.Message):
    __slots__ = ["dropout", "encoder_hidden_size", "encoder_type", "init_std", "num_layers"]
    class EncoderType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = []
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_TYPE_EMBEDDING: PTuningOptions.EncoderType
    ENCODER_TYPE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_TYPE_LSTM: PTuningOptions.EncoderType
    ENCODER_TYPE_MLP: PTuningOptions.EncoderType
    ENCODER_TYPE_PEFT_MLP: PTuningOptions.EncoderType
    ENCODER_TYPE_TPMLP: PTuningOptions.EncoderType
    ENCODER_TYPE_UNSPECIFIED: PTuningOptions.EncoderType
    INIT_STD_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    dropout: float
    encoder_hidden_size: int
    encoder_type: PTuningOptions.EncoderType
    init_std: float
    num_layers: int
    def __init__(self, encoder_type: _Optional[_Union[PTuningOptions.EncoderType, str]] = ..., encoder_hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., dropout: _Optional[float] = ..., init_std: _Optional[float] = ...) -> None: ...

class PeftAdapter(_message.Message):
    __slots__ = ["adapter_config_json", "adapter_safetensors"]
    ADAPTER_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SAFETENSORS_FIELD_NUMBER: _ClassVar[int]
    adapter_config_json: bytes
    adapter_safetensors: bytes
    def __init__(self, adapter_config_json: _Optional[bytes] = ..., adapter_safetensors: _Optional[bytes] = ...) -> None: ...

class PromptTable(_message.Message):
    __slots__ = ["hidden", "rows", "values"]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    hidden: int
    rows: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rows: _Optional[int] = ..., hidden: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class PromptTuningOptions(_message.Message):
    __slots__ = ["init_method", "init_text"]
    class InitMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = []
    INIT_METHOD_FIELD_NUMBER: _ClassVar[int]
    INIT_METHOD_RANDOM: PromptTuningOptions.InitMethod
    INIT_METHOD_SAMPLED_VOCAB: PromptTuningOptions.InitMethod
    INIT_METHOD_TEXT: PromptTuningOptions.InitMethod
    INIT_METHOD_UNSPECIFIED: PromptTuningOptions.InitMethod
    INIT_TEXT_FIELD_NUMBER: _ClassVar[int]
    init_method: PromptTuningOptions.InitMethod
    init_text: str
    def __init__(self, init_method: _Optional[_Union[PromptTuningOptions.InitMethod, str]] = ..., init_text: _Optional[str] = ...) -> None: ...

class RegisterTaskRequest(_message.Message):
    __slots__ = ["create_only", "name", "peft", "request_id", "table", "template"]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEFT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    create_only: bool
    name: str
    peft: PeftAdapter
    request_id: str
    table: PromptTable
    template: TaskTemplate
    def __init__(self, name: _Optional[str] = ..., template: _Optional[_Union[TaskTemplate, _Mapping]] = ..., table: _Optional[_Union[PromptTable, _Mapping]] = ..., peft: _Optional[_Union[PeftAdapter, _Mapping]] = ..., create_only: bool = ..., request_id: _Optional[str] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ["greedy", "random"]
    class Greedy(_message.Message):
        __slots__ = []
        def __init__(self) -> None: ...
    class Random(_message.Message):
        __slots__ = ["seed", "temperature", "top_k", "top_p"]
        SEED_FIELD_NUMBER: _ClassVar[int]
        TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
        TOP_K_FIELD_NUMBER: _ClassVar[int]
        TOP_P_FIELD_NUMBER: _ClassVar[int]
        seed: int
        temperature: float
        top_k: int
        top_p: float
        def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...
    GREEDY_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    greedy: Sampling.Greedy
    random: Sampling.Random
    def __init__(self, greedy: _Optional[_Union[Sampling.Greedy, _Mapping]] = ..., random: _Optional[_Union[Sampling.Random, _Mapping]] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ["min_lr", "name", "warmup_ratio", "warmup_steps"]
    MIN_LR_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    min_lr: float
    name: str
    warmup_ratio: float
    warmup_steps: int
    def __init__(self, name: _Optional[str] = ..., warmup_steps: _Optional[int] = ..., warmup_ratio: _Optional[float] = ..., min_lr: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ["base_model_fingerprint", "created_at", "evaluations", "has_encoder_state", "hidden_size", "metrics", "name", "source", "template", "total_virtual_tokens", "version", "versions"]
    class MetricsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BASE_MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_ENCODER_STATE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VIRTUAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    base_model_fingerprint: str
    created_at: _timestamp_pb2.Timestamp
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    has_encoder_state: bool
    hidden_size: int
    metrics: _containers.ScalarMap[str, float]
    name: str
    source: str
    template: TaskTemplate
    total_virtual_tokens: int
    version: int
    versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., template: _Optional[_Union[TaskTemplate, _Mapping]] = ..., total_virtual_tokens: _Optional[int] = ..., hidden_size: _Optional[int] = ..., base_model_fingerprint: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., versions: _Optional[_Iterable[int]] = ..., has_encoder_state: bool = ..., source: _Optional[str] = ..., evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ...) -> None: ...

class TaskMetrics(_message.Message):
    __slots__ = ["values"]
    class ValuesEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TaskTemplate(_message.Message):
    __slots__ = ["add_bos", "add_eos", "answer_field", "answer_only_loss", "max_seq_length", "min_seq_length", "prompt_template", "prompt_template_fields", "taskname", "total_virtual_tokens", "truncate_field", "virtual_token_splits"]
    ADD_BOS_FIELD_NUMBER: _ClassVar[int]
    ADD_EOS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ONLY_LOSS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TASKNAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VIRTUAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_TOKEN_SPLITS_FIELD_NUMBER: _ClassVar[int]
    add_bos: bool
    add_eos: bool
    answer_field: str
    answer_only_loss: bool
    max_seq_length: int
    min_seq_length: int
    prompt_template: str
    prompt_template_fields: _containers.RepeatedScalarFieldContainer[str]
    taskname: str
    total_virtual_tokens: int
    truncate_field: str
    virtual_token_splits: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, taskname: _Optional[str] = ..., prompt_template: _Optional[str] = ..., prompt_template_fields: _Optional[_Iterable[str]] = ..., total_virtual_tokens: _Optional[int] = ..., virtual_token_splits: _Optional[_Iterable[int]] = ..., truncate_field: _Optional[str] = ..., answer_field: _Optional[str] = ..., answer_only_loss: bool = ..., add_bos: bool = ..., add_eos: bool = ..., max_seq_length: _Optional[int] = ..., min_seq_length: _Optional[int] = ...) -> None: ...

class TaskVersion(_message.Message):
    __slots__ = ["task", "version"]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    task: str
    version: int
    def __init__(self, task: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ["logprob", "text", "token_id"]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    logprob: float
    text: str
    token_id: int
    def __init__(self, token_id: _Optional[int] = ..., text: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ["early_stopping", "existing_tasks", "global_batch_size", "log_every_n_steps", "max_epochs", "max_steps", "micro_batch_size", "name", "new_tasks", "optim", "p_tuning", "prompt_tuning", "refuse_missing_fields", "report_validation_metric", "seed", "skip_bad_records", "task_templates", "test_ds", "train_ds", "val_check_interval", "validation_ds", "validation_match", "virtual_prompt_style"]
    class ValidationMatch(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = []
    EARLY_STOPPING_FIELD_NUMBER: _ClassVar[int]
    EXISTING_TASKS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOG_EVERY_N_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NEW_TASKS_FIELD_NUMBER: _ClassVar[int]
    OPTIM_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TUNING_FIELD_NUMBER: _ClassVar[int]
    P_TUNING_FIELD_NUMBER: _ClassVar[int]
    REFUSE_MISSING_FIELDS_FIELD_NUMBER: _ClassVar[int]
    REPORT_VALIDATION_METRIC_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SKIP_BAD_RECORDS_FIELD_NUMBER: _ClassVar[int]
    TASK_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    TEST_DS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_DS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_MATCH_ANSWER: TrainConfig.ValidationMatch
    VALIDATION_MATCH_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_MATCH_SEQUENCE: TrainConfig.ValidationMatch
    VALIDATION_MATCH_UNSPECIFIED: TrainConfig.ValidationMatch
    VAL_CHECK_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_PROMPT_STYLE_FIELD_NUMBER: _ClassVar[int]
    early_stopping: EarlyStopping
    existing_tasks: _containers.RepeatedScalarFieldContainer[str]
    global_batch_size: int
    log_every_n_steps: int
    max_epochs: int
    max_steps: int
    micro_batch_size: int
    name: str
    new_tasks: _containers.RepeatedScalarFieldContainer[str]
    optim: Optimizer
    p_tuning: PTuningOptions
    prompt_tuning: PromptTuningOptions
    refuse_missing_fields: bool
    report_validation_metric: bool
    seed: int
    skip_bad_records: bool
    task_templates: _containers.RepeatedCompositeFieldContainer[TaskTemplate]
    test_ds: Dataset
    train_ds: Dataset
    val_check_interval: int
    validation_ds: Dataset
    validation_match: TrainConfig.ValidationMatch
    virtual_prompt_style: VirtualPromptStyle
    def __init__(self, name: _Optional[str] = ..., task_templates: _Optional[_Iterable[_Union[TaskTemplate, _Mapping]]] = ..., new_tasks: _Optional[_Iterable[str]] = ..., existing_tasks: _Optional[_Iterable[str]] = ..., virtual_prompt_style: _Optional[_Union[VirtualPromptStyle, str]] = ..., prompt_tuning: _Optional[_Union[PromptTuningOptions, _Mapping]] = ..., p_tuning: _Optional[_Union[PTuningOptions, _Mapping]] = ..., optim: _Optional[_Union[Optimizer, _Mapping]] = ..., max_epochs: _Optional[int] = ..., max_steps: _Optional[int] = ..., global_batch_size: _Optional[int] = ..., micro_batch_size: _Optional[int] = ..., val_check_interval: _Optional[int] = ..., early_stopping: _Optional[_Union[EarlyStopping, _Mapping]] = ..., seed: _Optional[int] = ..., train_ds: _Optional[_Union[Dataset, _Mapping]] = ..., validation_ds: _Optional[_Union[Dataset, _Mapping]] = ..., test_ds: _Optional[_Union[Dataset, _Mapping]] = ..., skip_bad_records: bool = ..., report_validation_metric: bool = ..., log_every_n_steps: _Optional[int] = ..., refuse_missing_fields: bool = ..., validation_match: _Optional[_Union[TrainConfig.ValidationMatch, str]] = ...) -> None: ...

class TrainEvent(_message.Message):
    __slots__ = ["cancelled", "checkpoint", "completed", "evaluating", "failed", "job_id", "queued", "sequence", "started", "step", "time", "validation"]
    class Cancelled(_message.Message):
        __slots__ = ["reason"]
        REASON_FIELD_NUMBER: _ClassVar[int]
        reason: str
        def __init__(self, reason: _Optional[str] = ...) -> None: ...
    class Checkpoint(_message.Message):
        __slots__ = ["kind", "step"]
        KIND_FIELD_NUMBER: _ClassVar[int]
        STEP_FIELD_NUMBER: _ClassVar[int]
        kind: str
        step: int
        def __init__(self, step: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...
    class Completed(_message.Message):
        __slots__ = ["early_stopped", "evaluation", "metrics", "steps", "written"]
        class MetricsEntry(_message.Message):
            __slots__ = ["key", "value"]
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: TaskMetrics
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TaskMetrics, _Mapping]] = ...) -> None: ...
        EARLY_STOPPED_FIELD_NUMBER: _ClassVar[int]
        EVALUATION_FIELD_NUMBER: _ClassVar[int]
        METRICS_FIELD_NUMBER: _ClassVar[int]
        STEPS_FIELD_NUMBER: _ClassVar[int]
        WRITTEN_FIELD_NUMBER: _ClassVar[int]
        early_stopped: bool
        evaluation: Evaluation
        metrics: _containers.MessageMap[str, TaskMetrics]
        steps: int
        written: _containers.RepeatedCompositeFieldContainer[TaskVersion]
        def __init__(self, written: _Optional[_Iterable[_Union[TaskVersion, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, TaskMetrics]] = ..., steps: _Optional[int] = ..., early_stopped: bool = ..., evaluation: _Optional[_Union[Evaluation, _Mapping]] = ...) -> None: ...
    class Evaluating(_message.Message):
        __slots__ = ["done", "task", "total", "version"]
        DONE_FIELD_NUMBER: _ClassVar[int]
        TASK_FIELD_NUMBER: _ClassVar[int]
        TOTAL_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        done: int
        task: str
        total: int
        version: int
        def __init__(self, task: _Optional[str] = ..., version: _Optional[int] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...
    class Failed(_message.Message):
        __slots__ = ["code", "reason"]
        CODE_FIELD_NUMBER: _ClassVar[int]
        REASON_FIELD_NUMBER: _ClassVar[int]
        code: int
        reason: str
        def __init__(self, reason: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...
    class Queued(_message.Message):
        __slots__ = ["position"]
        POSITION_FIELD_NUMBER: _ClassVar[int]
        position: int
        def __init__(self, position: _Optional[int] = ...) -> None: ...
    class Started(_message.Message):
        __slots__ = ["dropped_examples", "notes", "resumed_from_step", "skipped_records", "tasks", "total_epochs", "total_steps", "train_examples"]
        class DroppedExamplesEntry(_message.Message):
            __slots__ = ["key", "value"]
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: int
            def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
        class TrainExamplesEntry(_message.Message):
            __slots__ = ["key", "value"]
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: int
            def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
        DROPPED_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
        NOTES_FIELD_NUMBER: _ClassVar[int]
        RESUMED_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
        SKIPPED_RECORDS_FIELD_NUMBER: _ClassVar[int]
        TASKS_FIELD_NUMBER: _ClassVar[int]
        TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
        TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
        TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
        dropped_examples: _containers.ScalarMap[str, int]
        notes: _containers.RepeatedScalarFieldContainer[str]
        resumed_from_step: int
        skipped_records: int
        tasks: _containers.RepeatedScalarFieldContainer[str]
        total_epochs: int
        total_steps: int
        train_examples: _containers.ScalarMap[str, int]
        def __init__(self, total_steps: _Optional[int] = ..., total_epochs: _Optional[int] = ..., tasks: _Optional[_Iterable[str]] = ..., dropped_examples: _Optional[_Mapping[str, int]] = ..., skipped_records: _Optional[int] = ..., train_examples: _Optional[_Mapping[str, int]] = ..., resumed_from_step: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...
    class Step(_message.Message):
        __slots__ = ["epoch", "eta_seconds", "learning_rate", "loss", "step", "tokens_per_second", "total_steps"]
        EPOCH_FIELD_NUMBER: _ClassVar[int]
        ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
        LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
        LOSS_FIELD_NUMBER: _ClassVar[int]
        STEP_FIELD_NUMBER: _ClassVar[int]
        TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
        TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
        epoch: int
        eta_seconds: float
        learning_rate: float
        loss: float
        step: int
        tokens_per_second: float
        total_steps: int
        def __init__(self, step: _Optional[int] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., total_steps: _Optional[int] = ...) -> None: ...
    class Validation(_message.Message):
        __slots__ = ["epoch", "loss", "metrics", "step"]
        class MetricsEntry(_message.Message):
            __slots__ = ["key", "value"]
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: TaskMetrics
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TaskMetrics, _Mapping]] = ...) -> None: ...
        EPOCH_FIELD_NUMBER: _ClassVar[int]
        LOSS_FIELD_NUMBER: _ClassVar[int]
        METRICS_FIELD_NUMBER: _ClassVar[int]
        STEP_FIELD_NUMBER: _ClassVar[int]
        epoch: int
        loss: float
        metrics: _containers.MessageMap[str, TaskMetrics]
        step: int
        def __init__(self, step: _Optional[int] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., metrics: _Optional[_Mapping[str, TaskMetrics]] = ...) -> None: ...
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    EVALUATING_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    cancelled: TrainEvent.Cancelled
    checkpoint: TrainEvent.Checkpoint
    completed: TrainEvent.Completed
    evaluating: TrainEvent.Evaluating
    failed: TrainEvent.Failed
    job_id: str
    queued: TrainEvent.Queued
    sequence: int
    started: TrainEvent.Started
    step: TrainEvent.Step
    time: _timestamp_pb2.Timestamp
    validation: TrainEvent.Validation
    def __init__(self, sequence: _Optional[int] = ..., job_id: _Optional[str] = ..., time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., queued: _Optional[_Union[TrainEvent.Queued, _Mapping]] = ..., started: _Optional[_Union[TrainEvent.Started, _Mapping]] = ..., step: _Optional[_Union[TrainEvent.Step, _Mapping]] = ..., validation: _Optional[_Union[TrainEvent.Validation, _Mapping]] = ..., checkpoint: _Optional[_Union[TrainEvent.Checkpoint, _Mapping]] = ..., completed: _Optional[_Union[TrainEvent.Completed, _Mapping]] = ..., failed: _Optional[_Union[TrainEvent.Failed, _Mapping]] = ..., cancelled: _Optional[_Union[TrainEvent.Cancelled, _Mapping]] = ..., evaluating: _Optional[_Union[TrainEvent.Evaluating, _Mapping]] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ["config", "config_yaml", "extra_train_records", "extra_validation_records", "request_id"]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    EXTRA_TRAIN_RECORDS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_VALIDATION_RECORDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    config: TrainConfig
    config_yaml: str
    extra_train_records: Dataset
    extra_validation_records: Dataset
    request_id: str
    def __init__(self, config: _Optional[_Union[TrainConfig, _Mapping]] = ..., config_yaml: _Optional[str] = ..., extra_train_records: _Optional[_Union[Dataset, _Mapping]] = ..., extra_validation_records: _Optional[_Union[Dataset, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ["after_sequence", "job_id"]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    job_id: str
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class VirtualPromptStyle(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
