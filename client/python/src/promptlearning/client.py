"""A typed client for promptlearning.v1.PromptLearning over grpcio.

Requests are the generated messages (``promptlearning.pb``) or dicts in their JSON shape (proto
field names or their lowerCamelCase JSON names, enums by name); replies are the generated messages.
Every call takes ``timeout`` (seconds) and extra ``metadata``; a failed call raises
``PromptLearningError`` with the gRPC code and the server's message (for INVALID_ARGUMENT it names
the field), and a request the client can tell is malformed raises ``ValueError``/``TypeError``
naming the field before anything is sent.

    from promptlearning import PromptLearningClient, describe_event

    with PromptLearningClient("127.0.0.1:50051", token="secret") as client:
        done = client.train_and_wait(request, on_event=lambda e: print(describe_event(e)))
        best = client.infer_one("sentiment", {"sentence": "Great!"},
                                choices=["positive", "negative"])
"""
from __future__ import annotations

import math
import os
import time
import uuid
from typing import Callable, Generic, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, \
    TypeVar, Union

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from .v1 import prompt_learning_pb2 as pb
from .v1 import prompt_learning_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"

M = TypeVar("M", bound=Message)
#: Extra call metadata: a dict, or (key, value) pairs (keys lowercase, as gRPC requires).
Metadata = Union[Mapping[str, str], Sequence[Tuple[str, str]]]
#: A TrainRequest, its TrainConfig, NeMo-style YAML text, or a dict in TrainRequest's JSON shape.
TrainInput = Union[pb.TrainRequest, pb.TrainConfig, str, Mapping[str, object]]

_CODES = {c.value[0]: c for c in grpc.StatusCode}


class PromptLearningError(Exception):
    """A failed call: the RPC, its gRPC status code and the server's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str):
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, method: str, err: grpc.RpcError) -> PromptLearningError:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (err.details() if isinstance(err, grpc.Call) else None) or str(err)
        return cls(method, code, details)


class InferItemError(PromptLearningError):
    """One request of an Infer batch that could not be served (the others were)."""

    def __init__(self, index: int, error: pb.ItemError):
        code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
        super().__init__(f"Infer requests[{index}]", code, error.message)
        self.index = index


class JobEndedError(PromptLearningError):
    """A job that failed (its Failed event's code and reason) or was cancelled (CANCELLED)."""

    def __init__(self, method: str, event: pb.TrainEvent):
        if event.WhichOneof("event") == "failed":
            code = _CODES.get(event.failed.code, grpc.StatusCode.UNKNOWN)
            details = f"job {event.job_id} failed: {event.failed.reason}"
        else:
            code = grpc.StatusCode.CANCELLED
            details = f"job {event.job_id} cancelled: {event.cancelled.reason}"
        super().__init__(method, code, details)
        self.job_id = event.job_id
        self.event = event


class Stream(Generic[M]):
    """The messages of one server-streaming call, as an iterator; errors are PromptLearningError.
    ``cancel()`` (or leaving a ``with`` block) closes the call."""

    def __init__(self, method: str, call: Iterator[M]):
        self._method = method
        self._call = call

    def __iter__(self) -> Stream[M]:
        return self

    def __next__(self) -> M:
        try:
            return next(self._call)
        except grpc.RpcError as e:
            raise PromptLearningError.from_rpc(self._method, e) from None

    def cancel(self) -> None:
        self._call.cancel()  # type: ignore[attr-defined]

    def __enter__(self) -> Stream[M]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class JobStream(Stream[pb.TrainEvent]):
    """A job's events as Train, Evaluate or WatchJob streams them. Closing the stream leaves the job
    running (``cancel_job`` stops it); ``watch_job(stream.job_id, stream.last_sequence)``
    resumes."""

    job_id: Optional[str] = None
    last_sequence: int = 0

    def __next__(self) -> pb.TrainEvent:
        event = super().__next__()
        self.job_id = event.job_id or self.job_id
        self.last_sequence = event.sequence
        return event


def dataset(records: Iterable[Mapping[str, str]] = (), files: Sequence[str] = ()) -> pb.Dataset:
    """A Dataset of inline records (each with "taskname" and the template's fields, all strings)
    and/or files under the server's DATA_DIR."""
    out = pb.Dataset(files=list(files))
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise TypeError(f"records[{i}] must be a dict: got {type(record).__name__}")
        for key, value in record.items():
            if not isinstance(value, str):
                raise TypeError(
                    f"records[{i}][{key!r}] must be a str: got {type(value).__name__} {value!r}")
        out.records.add().update(dict(record))
    return out


def progress_line(step: pb.TrainEvent.Step, width: int = 24) -> str:
    """A Step event as one line: a bar, step/total, epoch, loss, learning rate, tokens/s, ETA."""
    total = step.total_steps if step.total_steps > 0 else 0
    filled = round(min(1.0, step.step / total) * width) if total else 0
    eta = step.eta_seconds
    eta_text = "?" if not math.isfinite(eta) or eta < 0 else (
        f"{int(eta // 60)}m{round(eta % 60):02d}s" if eta >= 60 else f"{round(eta)}s")
    return (f"[{'#' * filled}{'.' * (width - filled)}] step {step.step}/{total or '?'} "
            f"epoch {step.epoch} loss {step.loss:.4f} lr {step.learning_rate:.2e} "
            f"{round(step.tokens_per_second)} tok/s ETA {eta_text}")


def describe_event(event: pb.TrainEvent) -> str:
    """One line for any job event (the Deno CLI's wording)."""
    kind = event.WhichOneof("event")
    if kind == "queued":
        return f"job {event.job_id} queued (position {event.queued.position})"
    if kind == "started":
        s = event.started
        return f"job {event.job_id} started: {', '.join(s.tasks)}, {s.total_steps} steps"
    if kind == "step":
        return progress_line(event.step)
    if kind == "validation":
        v = event.validation
        parts = [f"{task}: " + " ".join(f"{k}={x:.4f}" for k, x in sorted(m.values.items()))
                 for task, m in sorted(v.metrics.items())]
        return f"validation @{v.step}: {'; '.join(parts)}"
    if kind == "checkpoint":
        return f"checkpoint @{event.checkpoint.step} ({event.checkpoint.kind})"
    if kind == "evaluating":
        e = event.evaluating
        return f"evaluating {e.task} v{e.version}: {e.done}/{e.total}"
    if kind == "completed":
        c = event.completed
        written = ", ".join(f"{w.task} v{w.version}" for w in c.written) or "nothing"
        return f"job {event.job_id} completed: wrote {written} in {c.steps} steps"
    if kind == "failed":
        return f"job {event.job_id} failed: {event.failed.reason}"
    if kind == "cancelled":
        return f"job {event.job_id} cancelled: {event.cancelled.reason}"
    return f"job {event.job_id}: event {event.sequence}"


def _message(value: object, cls: type[M], what: str) -> M:
    """`value` as a `cls` message: itself, or a dict in its JSON shape."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return json_format.ParseDict(value, cls())
        except json_format.ParseError as e:
            raise ValueError(f"{what}: {str(e).splitlines()[0]}") from None
    raise TypeError(
        f"{what} must be a {cls.DESCRIPTOR.full_name} or a dict: got {type(value).__name__}")


def _root_certificates(tls: object) -> Optional[bytes]:
    if tls is True:
        return None  # gRPC's default roots
    if isinstance(tls, bytes):
        return tls
    if isinstance(tls, (str, os.PathLike)):
        with open(tls, "rb") as f:
            return f.read()
    raise TypeError("tls must be False, True, PEM bytes or a CA certificate file path: "
                    f"got {type(tls).__name__}")


class PromptLearningClient:
    """A connection to one PromptLearning service.

    address: "host:port" (or any gRPC target). token: sent as ``authorization: Bearer <token>`` on
    every call (the service wants it for Train, Evaluate, CancelJob, RegisterTask, DeleteTask when
    it has one). tls: False (default, plaintext), True (TLS with the default roots), or the CA
    certificate as PEM bytes or a file path. max_message_bytes: the largest message either way
    (default 64 MiB). options: extra grpcio channel options. channel: a channel to use instead.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, token: Optional[str] = None,
                 tls: Union[bool, bytes, str, os.PathLike] = False,
                 max_message_bytes: int = 64 << 20,
                 options: Sequence[Tuple[str, object]] = (),
                 channel: Optional[grpc.Channel] = None):
        if not isinstance(address, str) or not address.strip():
            raise ValueError(f"address must be 'host:port': got {address!r}")
        if token is not None and (not isinstance(token, str) or not token
                                  or any(c.isspace() or not c.isprintable() for c in token)):
            raise ValueError(
                "token must be a non-empty string of printable characters without spaces")
        if not isinstance(max_message_bytes, int) or max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be a positive int: got {max_message_bytes!r}")
        self.address = address
        if channel is None:
            opts = [("grpc.max_receive_message_length", max_message_bytes),
                    ("grpc.max_send_message_length", max_message_bytes), *options]
            if tls is False:
                channel = grpc.insecure_channel(address, options=opts)
            else:
                creds = grpc.ssl_channel_credentials(root_certificates=_root_certificates(tls))
                channel = grpc.secure_channel(address, creds, options=opts)
        self._channel = channel
        self._stub = pb_grpc.PromptLearningStub(channel)
        self._token = token

    # -- plumbing ---------------------------------------------------------------------------------

    def _metadata(self, extra: Optional[Metadata]) -> list[Tuple[str, str]]:
        pairs = list(extra.items() if isinstance(extra, Mapping) else (extra or ()))
        if self._token is not None:
            pairs.append(("authorization", f"Bearer {self._token}"))
        return pairs

    def _unary(self, method: str, request: Message, timeout: Optional[float],
               metadata: Optional[Metadata]):
        try:
            return getattr(self._stub, method)(request, timeout=timeout,
                                               metadata=self._metadata(metadata))
        except grpc.RpcError as e:
            raise PromptLearningError.from_rpc(method, e) from None

    def _jobs(self, method: str, request: Message, timeout: Optional[float],
              metadata: Optional[Metadata]) -> JobStream:
        call = getattr(self._stub, method)(request, timeout=timeout,
                                           metadata=self._metadata(metadata))
        return JobStream(method, call)

    def _follow(self, method: str, start: Callable[[], JobStream],
                on_event: Optional[Callable[[pb.TrainEvent], None]], reconnects: int,
                reconnect_delay: float, timeout: Optional[float],
                metadata: Optional[Metadata]) -> pb.TrainEvent:
        """Follows a job to its end, resuming with WatchJob after the last event seen when the
        connection drops (UNAVAILABLE), at most `reconnects` times, `reconnect_delay` seconds
        apart, doubling."""
        stream, job_id, last, tries = start(), None, 0, 0
        while True:
            try:
                for event in stream:
                    if event.sequence <= last:
                        continue  # a retried Train replays the job from its start
                    job_id, last, tries = event.job_id, event.sequence, 0
                    if on_event is not None:
                        on_event(event)
                    kind = event.WhichOneof("event")
                    if kind == "completed":
                        return event
                    if kind in ("failed", "cancelled"):
                        raise JobEndedError(method, event)
                raise PromptLearningError(
                    method, grpc.StatusCode.UNKNOWN,
                    f"the stream ended after event {last} without the job's end")
            except PromptLearningError as e:
                if isinstance(e, JobEndedError) or e.code != grpc.StatusCode.UNAVAILABLE \
                        or tries >= reconnects:
                    raise
                time.sleep(reconnect_delay * 2 ** tries)
                tries += 1
                stream = start() if job_id is None else self.watch_job(
                    job_id, last, timeout=timeout, metadata=metadata)

    # -- jobs -------------------------------------------------------------------------------------

    def train(self, request: TrainInput, *, request_id: Optional[str] = None,
              timeout: Optional[float] = None, metadata: Optional[Metadata] = None) -> JobStream:
        """Starts a training job and streams its events until it ends. `request`: a TrainRequest,
        a TrainConfig, NeMo-style YAML text, or a dict shaped as TrainRequest. `request_id` (a
        UUID) makes retries safe (AIP-155): a retry with it gets the first call's job."""
        req = self._train_request(request)
        if request_id is not None:
            req.request_id = request_id
        return self._jobs("Train", req, timeout, metadata)

    def train_and_wait(self, request: TrainInput, *,
                       on_event: Optional[Callable[[pb.TrainEvent], None]] = None,
                       request_id: Optional[str] = None, reconnects: int = 5,
                       reconnect_delay: float = 0.5, timeout: Optional[float] = None,
                       metadata: Optional[Metadata] = None) -> pb.TrainEvent:
        """Trains and returns the job's Completed event (`.job_id`, `.completed.written`);
        `on_event` sees every event first (e.g. ``lambda e: print(describe_event(e))``). A job that
        fails or is cancelled raises JobEndedError. A dropped connection is resumed: Train again
        with the same request id (one is made when none is given) before the job's first event,
        WatchJob after it."""
        req = self._train_request(request)
        req.request_id = request_id or req.request_id or str(uuid.uuid4())
        return self._follow("Train", lambda: self._jobs("Train", req, timeout, metadata), on_event,
                            reconnects, reconnect_delay, timeout, metadata)

    def evaluate(self, request: Union[pb.EvaluateRequest, Mapping[str, object]], *,
                 timeout: Optional[float] = None,
                 metadata: Optional[Metadata] = None) -> JobStream:
        """Starts a job evaluating one task version on a dataset and streams its events; the
        result (the Completed event's `evaluation`) is kept with the version (get_task)."""
        return self._jobs("Evaluate", _message(request, pb.EvaluateRequest, "request"), timeout,
                          metadata)

    def watch_job(self, job_id: str, after_sequence: int = 0, *, timeout: Optional[float] = None,
                  metadata: Optional[Metadata] = None) -> JobStream:
        """A job's events after `after_sequence` (0: all), then live ones until it ends."""
        return self._jobs("WatchJob", pb.WatchJobRequest(job_id=job_id,
                                                         after_sequence=after_sequence),
                          timeout, metadata)

    def wait_job(self, job_id: str, after_sequence: int = 0, *,
                 on_event: Optional[Callable[[pb.TrainEvent], None]] = None, reconnects: int = 5,
                 reconnect_delay: float = 0.5, timeout: Optional[float] = None,
                 metadata: Optional[Metadata] = None) -> pb.TrainEvent:
        """As train_and_wait for a job already started: its Completed event, or JobEndedError."""
        return self._follow("WatchJob", lambda: self.watch_job(job_id, after_sequence,
                                                               timeout=timeout, metadata=metadata),
                            on_event, reconnects, reconnect_delay, timeout, metadata)

    def get_job(self, job_id: str, *, timeout: Optional[float] = None,
                metadata: Optional[Metadata] = None) -> pb.Job:
        return self._unary("GetJob", pb.GetJobRequest(job_id=job_id), timeout, metadata)

    def list_jobs(self, page_size: int = 0, page_token: str = "", *,
                  timeout: Optional[float] = None,
                  metadata: Optional[Metadata] = None) -> pb.ListJobsResponse:
        return self._unary("ListJobs", pb.ListJobsRequest(page_size=page_size,
                                                          page_token=page_token),
                           timeout, metadata)

    def cancel_job(self, job_id: str, *, timeout: Optional[float] = None,
                   metadata: Optional[Metadata] = None) -> pb.Job:
        return self._unary("CancelJob", pb.CancelJobRequest(job_id=job_id), timeout, metadata)

    # -- tasks ------------------------------------------------------------------------------------

    def register_task(self, name: str, template: Union[pb.TaskTemplate, Mapping[str, object]], *,
                      table: Union[pb.PromptTable, Sequence[Sequence[float]], None] = None,
                      peft: Union[pb.PeftAdapter, str, os.PathLike, None] = None,
                      create_only: bool = False, request_id: Optional[str] = None,
                      timeout: Optional[float] = None,
                      metadata: Optional[Metadata] = None) -> pb.Task:
        """Registers a new version of `name` from a prompt table (one row of hidden floats per
        virtual token, or a PromptTable) or a PEFT prompt-tuning adapter (a PeftAdapter, or the
        directory holding adapter_config.json and adapter_model.safetensors)."""
        if (table is None) == (peft is None):
            raise ValueError("register_task needs exactly one of table and peft")
        req = pb.RegisterTaskRequest(name=name, template=_message(template, pb.TaskTemplate,
                                                                  "template"),
                                     create_only=create_only, request_id=request_id or "")
        if table is not None:
            req.table.CopyFrom(table if isinstance(table, pb.PromptTable) else _table(table))
        elif isinstance(peft, pb.PeftAdapter):
            req.peft.CopyFrom(peft)
        else:
            with open(os.path.join(peft, "adapter_config.json"), "rb") as f:
                req.peft.adapter_config_json = f.read()
            with open(os.path.join(peft, "adapter_model.safetensors"), "rb") as f:
                req.peft.adapter_safetensors = f.read()
        return self._unary("RegisterTask", req, timeout, metadata)

    def get_task(self, name: str, version: Optional[int] = None, *,
                 timeout: Optional[float] = None, metadata: Optional[Metadata] = None) -> pb.Task:
        """A task version (the latest when `version` is None)."""
        req = pb.GetTaskRequest(name=name)
        if version is not None:
            req.version = version
        return self._unary("GetTask", req, timeout, metadata)

    def list_tasks(self, page_size: int = 0, page_token: str = "", *,
                   timeout: Optional[float] = None,
                   metadata: Optional[Metadata] = None) -> pb.ListTasksResponse:
        return self._unary("ListTasks", pb.ListTasksRequest(page_size=page_size,
                                                            page_token=page_token),
                           timeout, metadata)

    def delete_task(self, name: str, *, timeout: Optional[float] = None,
                    metadata: Optional[Metadata] = None) -> pb.DeleteTaskResponse:
        return self._unary("DeleteTask", pb.DeleteTaskRequest(name=name), timeout, metadata)

    # -- inference --------------------------------------------------------------------------------

    def infer(self, requests: Sequence[Union[pb.InferRequest, Mapping[str, object]]], *,
              timeout: Optional[float] = None,
              metadata: Optional[Metadata] = None) -> list[pb.InferResult]:
        """One result per request, in order: each a `completion` or its own `error`."""
        batch = pb.InferBatchRequest(requests=[_message(r, pb.InferRequest, f"requests[{i}]")
                                               for i, r in enumerate(requests)])
        return list(self._unary("Infer", batch, timeout, metadata).results)

    def infer_one(self, task: str, fields: Mapping[str, str], *, version: Optional[int] = None,
                  max_new_tokens: Optional[int] = None, min_new_tokens: Optional[int] = None,
                  temperature: Optional[float] = None, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, seed: Optional[int] = None,
                  repetition_penalty: Optional[float] = None, stop: Sequence[str] = (),
                  return_logprobs: bool = False, choices: Sequence[str] = (),
                  allowed: Sequence[str] = (), timeout: Optional[float] = None,
                  metadata: Optional[Metadata] = None) -> pb.Completion:
        """One request's Completion (InferItemError when it cannot be served). Greedy unless
        temperature, top_k, top_p or seed is given; `choices` ranks candidate answers (the
        completion's `choices` holds every score), `allowed` keeps generation to those answers."""
        result = self.infer([infer_request(
            task, fields, version=version, max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            seed=seed, repetition_penalty=repetition_penalty, stop=stop,
            return_logprobs=return_logprobs, choices=choices, allowed=allowed)],
            timeout=timeout, metadata=metadata)[0]
        if result.WhichOneof("outcome") == "error":
            raise InferItemError(0, result.error)
        return result.completion

    def infer_stream(self, request: Union[pb.InferRequest, Mapping[str, object]], *,
                     timeout: Optional[float] = None,
                     metadata: Optional[Metadata] = None) -> Stream[pb.InferStreamEvent]:
        """One request's tokens as they are generated (`token` events), then its `done`."""
        req = _message(request, pb.InferRequest, "request")
        return Stream("InferStream", self._stub.InferStream(req, timeout=timeout,
                                                            metadata=self._metadata(metadata)))

    # -- connection -------------------------------------------------------------------------------

    def wait_for_ready(self, timeout: float = 5.0) -> None:
        """Waits until the channel connects; TimeoutError after `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"{self.address}: not connected after {timeout} s") from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PromptLearningClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _train_request(request: TrainInput) -> pb.TrainRequest:
        if isinstance(request, pb.TrainConfig):
            return pb.TrainRequest(config=request)
        if isinstance(request, str):
            return pb.TrainRequest(config_yaml=request)
        req = pb.TrainRequest()
        req.CopyFrom(_message(request, pb.TrainRequest, "request"))
        return req


def infer_request(task: str, fields: Mapping[str, str], *, version: Optional[int] = None,
                  max_new_tokens: Optional[int] = None, min_new_tokens: Optional[int] = None,
                  temperature: Optional[float] = None, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, seed: Optional[int] = None,
                  repetition_penalty: Optional[float] = None, stop: Sequence[str] = (),
                  return_logprobs: bool = False, choices: Sequence[str] = (),
                  allowed: Sequence[str] = ()) -> pb.InferRequest:
    """An InferRequest from keyword arguments (see PromptLearningClient.infer_one)."""
    if not isinstance(task, str) or not task:
        raise ValueError(f"task must be a task name: got {task!r}")
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields must be a dict of str: got {type(fields).__name__}")
    for key, value in fields.items():
        if not isinstance(value, str):
            raise TypeError(f"fields[{key!r}] must be a str: got {type(value).__name__} {value!r}")
    req = pb.InferRequest(task=task, fields=dict(fields), stop=list(stop),
                          return_logprobs=return_logprobs, choices=list(choices),
                          allowed=list(allowed))
    if version is not None:
        req.version = version
    if max_new_tokens is not None:
        req.max_new_tokens = max_new_tokens
    if min_new_tokens is not None:
        req.min_new_tokens = min_new_tokens
    if repetition_penalty is not None:
        req.repetition_penalty = repetition_penalty
    if (temperature, top_k, top_p, seed) != (None, None, None, None):
        random = req.sampling.random
        random.temperature = 1.0 if temperature is None else temperature
        random.top_k = top_k or 0
        random.top_p = top_p or 0.0
        if seed is not None:
            random.seed = seed
    return req


def _table(rows: Sequence[Sequence[float]]) -> pb.PromptTable:
    """[rows, hidden] floats as a PromptTable."""
    rows = [list(r) for r in rows]
    if not rows or not rows[0]:
        raise ValueError("table must have at least one row of at least one value")
    hidden = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != hidden:
            raise ValueError(f"table[{i}] has {len(row)} values; table[0] has {hidden}")
    return pb.PromptTable(rows=len(rows), hidden=hidden, values=[v for r in rows for v in r])


__all__ = [
    "DEFAULT_ADDRESS", "InferItemError", "JobEndedError", "JobStream", "Metadata",
    "PromptLearningClient", "PromptLearningError", "Stream", "TrainInput", "dataset",
    "describe_event", "infer_request", "progress_line",
]
